"""The tiktoken encoder gives the `tokenizers` library's ids, or is not used.

The Hugging Face tokenizer is the reference. Both encode the bundled corpora
(pretraining and SFT samples), the adversarial strings of the tokenizer tests
and a generated stress set; ids must be identical, for the
demo tokenizer and for variants of it in the other shapes the fast path
accepts. Tokenizers it cannot reproduce fall back to the library, naming why.
"""

import json
import random
import shutil
import unicodedata

import pytest
from tokenizers import Tokenizer

from chatbaker_megatron.data.demo.prepare import PRETRAIN_SAMPLES, SFT_SAMPLES
from chatbaker_megatron.data.preprocess import pipeline
from chatbaker_megatron.data.tokenizer.fast import (
    HFEncoder,
    NotExact,
    TiktokenEncoder,
    batch_encoder,
)
from tests.data.preprocess.test_preprocess import write_jsonl
from tests.data.tokenizer.test_tokenizer import ROUND_TRIPS

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def bundled_texts() -> list[str]:
    texts = []
    for path in PRETRAIN_SAMPLES.values():
        with open(path, encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    for record in json.loads(SFT_SAMPLES.read_text(encoding="utf-8")):
        texts += [turn["value"] for turn in record["conversations"]]
    return texts


def stress_texts() -> list[str]:
    """Few, large strings (one call each would be slow): every Hangul syllable block, emoji
    and ZWJ sequences, mixed scripts, whitespace runs, control characters, combining marks
    (some sort differently in Python's Unicode tables), random code points, added tokens."""
    rng = random.Random(24)
    syllables = [chr(c) for c in range(0xAC00, 0xD7A4)]
    assert len(syllables) == 11_172
    words = []
    for i in range(0, len(syllables), 3):
        words.append("".join(syllables[i : i + rng.randint(1, 4)]))
        words.append(rng.choice([" ", ". ", ", ", "\n", "  ", "?", "1", " 2", "'s "]))
    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()] + ["\u200b", "\ufeff"]
    controls = [chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]]
    marks = [chr(c) for c in range(0x300, 0x20000) if unicodedata.combining(chr(c))]
    emoji = (
        "👨‍👩‍👧‍👦 👩🏽‍💻 🏳️‍🌈 🇰🇷🇺🇸 #️⃣ 1️⃣ 🏴󠁧󠁢󠁳󠁣󠁴󠁿 ❤️‍🔥 🧑‍🤝‍🧑 👍🏻👍🏼👍🏽👍🏾👍🏿 😀😃😄 ☺︎ ☺️ "
        "🫠🪿 \u200d\u200d 👨\u200d 🤷‍♀️"
    )
    points = [
        rng.choice([rng.randrange(0xD800), rng.randrange(0xE000, 0x110000)]) for _ in range(30_000)
    ]
    return [
        "".join(syllables),
        "".join(words),
        unicodedata.normalize("NFD", "".join(syllables[::7])),  # conjoining jamo -> NFC
        emoji * 20,
        "한국어English123中文にほんごРусский العربية हिन्दी ไทย 한1a2 ABC's DON'T we'LL "
        "x=1;y+=2 // 주석 ½ ² ⅷ 1,234.56원 $3.50 ﷺ Ǆ ﬁ ｆｕｌｌｗｉｄｔｈ",
        "".join(rng.choice(spaces) * rng.randint(1, 5) + rng.choice("ab가 ") for _ in range(3000)),
        "  \n\n\r\n\t \t  lead " + " " * 200 + "tail \n" + "\n" * 50 + "   ",
        "".join(f"a{c}b{c}{c} " for c in controls),
        "".join(f"e{m}\u0301{m}가{m} " for m in marks),
        "".join(map(chr, points)),
        "<|endoftext|>\u0338 a<|endoftext|>b<human>: 안녕 <bot>:<|pad|><|pad|>x< |endoftext|> "
        "<|endoftext <human <bot> <|startoftext|>\u0301",
        "x" * 3000 + "ab" * 1500 + "한" * 2000 + "😀" * 500,
    ]


def variant(tokenizer, change) -> Tokenizer:
    spec = json.loads(tokenizer.backend.to_str())
    change(spec)
    return Tokenizer.from_str(json.dumps(spec))


def llama3_style(spec: dict) -> None:
    spec["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {
                "type": "Split",
                "pattern": {"Regex": LLAMA3_PATTERN},
                "behavior": "Isolated",
                "invert": False,
            },
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": False,
            },
        ],
    }
    spec["model"]["ignore_merges"] = True


def no_normalizer(spec: dict) -> None:
    spec["normalizer"] = None


EXACT_VARIANTS = {"demo": lambda spec: None, "llama3-style": llama3_style, "raw": no_normalizer}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return bundled_texts() + ROUND_TRIPS + stress_texts()


@pytest.mark.parametrize("name", EXACT_VARIANTS)
def test_tiktoken_ids_equal_the_tokenizers_library(tokenizer, texts, name):
    backend = variant(tokenizer, EXACT_VARIANTS[name])
    fast = batch_encoder(backend, "auto", threads=2)
    assert isinstance(fast, TiktokenEncoder), fast.note
    expected = HFEncoder(backend, "").encode_batch(texts)
    got = fast.encode_batch(texts)
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a == b, f"text {i} ({texts[i][:40]!r}...) differs"
    assert sum(map(len, got)) > 300_000


def test_special_tokens_split_first_and_lone_surrogates_are_refused(tokenizer):
    fast = TiktokenEncoder.build(tokenizer.backend)
    (ids,) = fast.encode_batch(["<|endoftext|>\u0338"])
    # The added token is matched before NFC could merge ">" and U+0338 into "≯".
    assert ids[0] == tokenizer.eos_id and ids == tokenizer.encode("<|endoftext|>\u0338")
    lone = json.loads('"caf\\ud800e"')
    with pytest.raises(ValueError, match=r"lone surrogate U\+D800 at character 3"):
        fast.encode_batch(["fine", lone])
    with pytest.raises(TypeError):  # the reference refuses it too
        HFEncoder(tokenizer.backend, "").encode_batch([lone])


def lowercase(spec):
    spec["normalizer"] = {"type": "Lowercase"}


def prefix_space(spec):
    spec["pre_tokenizer"]["add_prefix_space"] = True


def stripped_added_token(spec):
    spec["added_tokens"][3]["lstrip"] = True


def merges_out_of_id_order(spec):
    merges = spec["model"]["merges"]
    merges[10], merges[11] = merges[11], merges[10]


def dropout(spec):
    spec["model"]["dropout"] = 0.1


def nested_added_token(spec):
    spec["added_tokens"].append({**spec["added_tokens"][4], "id": 4096, "content": "<bot>:"})


def unreachable_token(spec):
    """A last merge c + cc whose result BPE never makes: its bytes go cc + c first."""
    vocab = spec["model"]["vocab"]
    char = next(c for c in vocab if len(c) == 1 and c * 2 in vocab and c * 3 not in vocab)
    vocab[char * 3] = max(vocab.values()) + 1
    spec["model"]["merges"].append([char, char * 2])


FALLBACKS = {
    "normalizer Lowercase": lowercase,
    "pre-tokenizer ByteLevel with add_prefix_space": prefix_space,
    "added token '<human>' with lstrip": stripped_added_token,
    "result's id is not in merge order": merges_out_of_id_order,
    "BPE dropout=0.1": dropout,
    "added token '<bot>' is a prefix of '<bot>:'": nested_added_token,
    "BPE of its own bytes gives 2 tokens": unreachable_token,
}


@pytest.mark.parametrize("reason", FALLBACKS)
def test_tokenizers_it_cannot_reproduce_use_the_library_and_say_why(tokenizer, reason):
    backend = variant(tokenizer, FALLBACKS[reason])
    with pytest.raises(NotExact, match=reason.replace("(", r"\(")):
        batch_encoder(backend, "tiktoken")
    chosen = batch_encoder(backend, "auto")
    assert isinstance(chosen, HFEncoder)
    assert "\n" not in chosen.note and reason in chosen.note


@pytest.mark.parametrize("name", ["demo", "llama3-style"])
def test_preprocess_output_is_byte_identical_with_either_encoder(
    tokenizer, demo, texts, tmp_path, name
):
    directory = tmp_path / "tokenizer"
    shutil.copytree(demo.tokenizer, directory)
    variant(tokenizer, EXACT_VARIANTS[name]).save(str(directory / "tokenizer.json"))
    # The ids tests cover every text; here the pipeline around the encoder (chunks, eos, the
    # added tokens, the writer) over the stress set and a share of the corpora.
    sample = texts[::8] + stress_texts() + ROUND_TRIPS
    source = write_jsonl(tmp_path / "in.jsonl", [t for t in sample if t.strip()])
    outputs = {}
    for encoder in ("hf", "tiktoken"):
        prefix = str(tmp_path / encoder)
        stats = pipeline.preprocess(
            [source], str(directory), prefix, workers=0, progress=False, encoder=encoder
        )
        assert stats.summary().splitlines()[-1].startswith(f"encoder: {encoder}")
        outputs[encoder] = [(tmp_path / f"{encoder}{s}").read_bytes() for s in (".bin", ".idx")]
    assert outputs["hf"] == outputs["tiktoken"]
