"""Tokenizer: exact round trips, special tokens, Hugging Face loading, training and its CLI."""

import json
import random
import re
import unicodedata
from pathlib import Path

import pytest

from chatbaker_megatron.cli import main
from chatbaker_megatron.data.corpus import BadInputError
from chatbaker_megatron.data.demo.prepare import PRETRAIN_SAMPLES
from chatbaker_megatron.data.tokenizer.load import load_tokenizer
from chatbaker_megatron.data.tokenizer.train import train_tokenizer

SAMPLE_INPUTS = [str(PRETRAIN_SAMPLES["ko"]), str(PRETRAIN_SAMPLES["en"])]

ROUND_TRIPS = [
    "대한민국은 민주공화국이다. 모든 권력은 국민으로부터 나온다.",
    "The quick brown fox jumps over the lazy dog.",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇰🇷 and ZWJ sequences",
    "  leading, trailing\tand repeated   spaces\n\n\r\n  ",
    "코드 `print('안녕')`와 mixed 한영 text, 숫자 12,345.67원",
    "<human>: 안녕? <bot>: 네, 안녕하세요!<|endoftext|>",
    "뷁 똠얌꿍 쀍 (rare syllables) and Ω≈ç√∫˜µ≤≥÷",
]


@pytest.mark.parametrize("text", ROUND_TRIPS, ids=[f"text{i}" for i in range(len(ROUND_TRIPS))])
def test_round_trip_is_exact(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_byte_garbage_round_trips_up_to_nfc(tokenizer):
    rng = random.Random(0)
    latin1 = bytes(rng.randrange(256) for _ in range(2000)).decode("latin-1")
    # Random code points from every plane (surrogates cannot be in a str sent to Rust).
    points = [
        rng.choice([rng.randrange(0x20, 0xD800), rng.randrange(0xE000, 0x110000)])
        for _ in range(2000)
    ]
    for garbage in (latin1, "".join(map(chr, points)), "\x00\x01\x7f\ufeff\ufffd"):
        ids = tokenizer.encode(garbage)
        assert tokenizer.decode(ids) == unicodedata.normalize("NFC", garbage)


def test_nfc_normalisation_unifies_decomposed_hangul(tokenizer):
    composed = "한국어 텍스트"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert tokenizer.encode(decomposed) == tokenizer.encode(composed)
    assert tokenizer.decode(tokenizer.encode(decomposed)) == composed


def test_special_tokens_have_fixed_ids(tokenizer):
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
    assert (tokenizer.pad, tokenizer.eod) == (0, 2)
    assert tokenizer.encode("<human><bot><|endoftext|>") == [3, 4, 2]
    assert tokenizer.vocab_size == 4096
    # Special tokens are never produced by ordinary text.
    assert not set(tokenizer.encode(" ".join(ROUND_TRIPS[:5]))) & {0, 1, 2, 3, 4}


def test_hugging_face_loads_the_same_tokenizer(demo, tokenizer):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(demo.tokenizer / "tokenizer.json")
    )
    auto = transformers.AutoTokenizer.from_pretrained(str(demo.tokenizer))
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (1, 2, 0)
    for text in ROUND_TRIPS:
        ids = tokenizer.encode(text)
        assert fast.encode(text, add_special_tokens=False) == ids
        assert auto.encode(text, add_special_tokens=False) == ids
        assert auto.decode(ids) == text


def test_training_is_deterministic_and_honours_vocab_size(tmp_path):
    first = train_tokenizer(SAMPLE_INPUTS, tmp_path / "a", vocab_size=1024, show_progress=False)
    train_tokenizer(SAMPLE_INPUTS, tmp_path / "b", vocab_size=1024, show_progress=False)
    assert first.tokenizer.get_vocab_size() == 1024
    assert (tmp_path / "a/tokenizer.json").read_bytes() == (
        tmp_path / "b/tokenizer.json"
    ).read_bytes()


def test_held_out_documents_are_not_trained_on(tmp_path):
    counts = [len(Path(path).read_text(encoding="utf-8").splitlines()) for path in SAMPLE_INPUTS]
    result = train_tokenizer(
        SAMPLE_INPUTS, tmp_path, vocab_size=1024, heldout_fraction=0.1, show_progress=False
    )
    held_out = sum(int(n * 0.1) for n in counts)
    assert result.train_docs == sum(counts) - held_out
    assert result.fertility["ko"].docs + result.fertility["en"].docs == held_out
    assert result.fertility["ko"].docs > 0 and result.fertility["en"].docs > 0


def test_cli_train_writes_hf_files_and_reports_fertility(tmp_path, capsys):
    out = tmp_path / "tok"
    rc = main(
        [
            "tokenizer",
            "train",
            "--input",
            *SAMPLE_INPUTS,
            "--vocab-size",
            "2048",
            "--output",
            str(out),
            "--heldout-fraction",
            "0.1",
        ]
    )
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "<bot>:" in config["chat_template"]
    assert load_tokenizer(out).vocab_size == 2048
    report = capsys.readouterr().out
    fertility = {}
    for lang in ("ko", "en"):
        match = re.search(
            rf"^{lang}\s+(\d+)\s+[\d,]+\s+[\d,]+\s+[\d,]+\s+([\d.]+)\s+([\d.]+)$",
            report,
            re.MULTILINE,
        )
        assert match, report
        fertility[lang] = float(match.group(2))
    # Hangul syllables are 3 bytes each: Korean needs more tokens per character.
    assert 0.1 < fertility["en"] < fertility["ko"] < 1.5


def test_bad_training_input_fails_with_location_or_is_skipped(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": \n{"body": "no text key"}\n\xff\xfe\n')
    with pytest.raises(BadInputError, match=r"bad\.jsonl:2: invalid-json"):
        train_tokenizer(
            [str(bad), *SAMPLE_INPUTS], tmp_path / "t", vocab_size=512, show_progress=False
        )
    result = train_tokenizer(
        [str(bad), *SAMPLE_INPUTS],
        tmp_path / "t",
        vocab_size=512,
        on_error="skip",
        show_progress=False,
    )
    assert dict(result.errors.counts) == {"invalid-json": 1, "missing-key": 1, "non-utf8": 1}
    assert "bad.jsonl:3: missing-key" in result.errors.summary()
