"""Preprocessing: output equals direct encoding, workers change nothing, bad input, atomic output."""

import functools
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from chatbaker_megatron.cli import main
from chatbaker_megatron.data.corpus import BadInputError, iter_line_chunks
from chatbaker_megatron.data.datasets.meta import read_meta
from chatbaker_megatron.data.demo.prepare import PRETRAIN_SAMPLES
from chatbaker_megatron.data.preprocess import encode_pool, indexed_writer, pipeline
from chatbaker_megatron.data.preprocess.encode_worker import encode_text_chunk


def sample_texts(count: int) -> list[str]:
    texts = []
    for path in PRETRAIN_SAMPLES.values():
        with open(path, encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f][: count // 2]
    return texts


def write_jsonl(path, texts, key="text"):
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({key: text, "id": len(text)}, ensure_ascii=False) + "\n")
    return str(path)


def leftovers(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if ".partial-" in name)


def test_output_reads_back_as_direct_encoding(tokenizer, demo, tmp_path):
    texts = sample_texts(80)
    source = write_jsonl(tmp_path / "in.jsonl", texts, key="body")
    prefix = str(tmp_path / "out")
    stats = pipeline.preprocess(
        [source], str(demo.tokenizer), prefix, json_key="body", workers=0, progress=False
    )
    data = IndexedDataset(prefix)
    assert len(data) == len(texts) == stats.docs
    for i, text in enumerate(texts):
        assert data[i].tolist() == [*tokenizer.encode(text), tokenizer.eos_id]
    # One document per sample.
    assert data.document_indices.tolist() == list(range(len(texts) + 1))
    assert stats.tokens == int(data.sequence_lengths.sum())
    assert data[0].dtype == np.uint16
    meta = read_meta(prefix)
    assert meta["tokenizer_sha256"] == tokenizer.sha256 and meta["documents"] == len(texts)


def test_worker_processes_give_identical_output(demo, tmp_path, monkeypatch):
    monkeypatch.setattr(encode_pool, "CHUNK_BYTES", 8192)  # many chunks in flight
    texts = sample_texts(200)
    inputs = [
        write_jsonl(tmp_path / "a.jsonl", texts[:90]),
        write_jsonl(tmp_path / "b.jsonl", texts[90:]),
    ]
    for workers in (0, 2):
        pipeline.preprocess(
            inputs,
            str(demo.tokenizer),
            str(tmp_path / f"w{workers}"),
            workers=workers,
            progress=False,
        )
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"w0{suffix}").read_bytes() == (tmp_path / f"w2{suffix}").read_bytes()
    assert len(IndexedDataset(str(tmp_path / "w2"))) == len(texts)


def test_chunks_in_flight_are_bounded(demo, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", sample_texts(100))
    pulled = []

    def work():
        for chunk in iter_line_chunks(source, 2048):
            pulled.append(chunk)
            yield chunk, 0

    encode = functools.partial(encode_text_chunk, json_key="text", dtype="uint16")
    consumed = 0
    for _ in encode_pool.encode_in_order(work(), encode, 1, str(demo.tokenizer), None):
        consumed += 1
        # Streaming: one worker never has more than IN_FLIGHT_PER_WORKER (2) chunks read ahead.
        assert len(pulled) - consumed <= encode_pool.IN_FLIGHT_PER_WORKER == 2
    assert consumed == len(pulled) > 10


BAD_INPUTS = {
    "invalid-json": b'{"text": "unterminated\n',
    "blank-line": b"\n",
    "missing-key": b'{"body": "no text key"}\n',
    "non-utf8": b'{"text": "caf\xe9"}\n',
    "empty": b'{"text": "   "}\n',
    "not-an-object": b'["a", "list"]\n',
    "not-a-string": b'{"text": 5}\n',
    "invalid-unicode": b'{"text": "lone \\ud800 surrogate"}\n',
}
KIND = {"blank-line": "invalid-json"}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_fails_naming_file_and_line(demo, tmp_path, case):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"text": "good one"}\n' + BAD_INPUTS[case] + b'{"text": "good two"}\n')
    prefix = str(tmp_path / "out")
    kind = KIND.get(case, case)
    with pytest.raises(BadInputError, match=rf"in\.jsonl:2: {kind}: "):
        pipeline.preprocess([str(source)], str(demo.tokenizer), prefix, workers=0, progress=False)
    assert not IndexedDataset.exists(prefix)
    assert not os.path.exists(prefix + ".bin") and leftovers(tmp_path) == []


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_skipped_and_counted(tokenizer, demo, tmp_path, case):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"text": "good one"}\n' + BAD_INPUTS[case] + b'{"text": "good two"}\n')
    prefix = str(tmp_path / "out")
    stats = pipeline.preprocess(
        [str(source)], str(demo.tokenizer), prefix, workers=0, on_error="skip", progress=False
    )
    assert dict(stats.errors.counts) == {KIND.get(case, case): 1}
    assert "in.jsonl:2" in stats.errors.summary()
    data = IndexedDataset(prefix)
    assert [data[i].tolist() for i in range(len(data))] == [
        [*tokenizer.encode("good one"), 2],
        [*tokenizer.encode("good two"), 2],
    ]


def test_a_byte_range_reads_its_lines_and_names_bad_ones_by_offset(tokenizer, demo, tmp_path):
    source = tmp_path / "in.jsonl"
    lines = [b'{"text": "one"}\n', b'{"text": "two"}\n', b"{oops\n", b'{"text": "four"}\n']
    source.write_bytes(b"".join(lines))
    start, end = len(lines[0]), sum(map(len, lines[:3]))
    with pytest.raises(BadInputError, match=rf"in\.jsonl:byte {start + len(lines[1])}: invalid-j"):
        pipeline.preprocess(
            [str(source)],
            str(demo.tokenizer),
            str(tmp_path / "a"),
            workers=0,
            ranges=[(start, end)],
        )
    prefix = str(tmp_path / "b")
    pipeline.preprocess(
        [str(source)], str(demo.tokenizer), prefix, workers=0, ranges=[(0, start)], progress=False
    )
    data = IndexedDataset(prefix)  # kept: its arrays are views of its memory map
    assert len(data) == 1 and data[0].tolist() == [*tokenizer.encode("one"), tokenizer.eos_id]


def test_failed_run_keeps_the_previous_output_intact(demo, tmp_path):
    prefix = str(tmp_path / "out")
    good = write_jsonl(tmp_path / "good.jsonl", sample_texts(20))
    pipeline.preprocess([good], str(demo.tokenizer), prefix, workers=0, progress=False)
    before = {s: Path(prefix + s).read_bytes() for s in (".bin", ".idx", ".meta.json")}
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "x"}\n{oops\n')
    with pytest.raises(BadInputError):
        pipeline.preprocess([str(bad)], str(demo.tokenizer), prefix, workers=0, progress=False)
    assert {s: Path(prefix + s).read_bytes() for s in before} == before
    assert leftovers(tmp_path) == []


def test_crash_while_writing_leaves_nothing_that_looks_complete(demo, tmp_path, monkeypatch):
    monkeypatch.setattr(encode_pool, "CHUNK_BYTES", 4096)
    source = write_jsonl(tmp_path / "in.jsonl", sample_texts(60))
    prefix = str(tmp_path / "out")
    calls = []
    real_add = indexed_writer.AtomicIndexedWriter.add

    def crash_on_third_chunk(self, chunk):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        real_add(self, chunk)

    monkeypatch.setattr(indexed_writer.AtomicIndexedWriter, "add", crash_on_third_chunk)
    with pytest.raises(RuntimeError, match="disk full"):
        pipeline.preprocess([source], str(demo.tokenizer), prefix, workers=0, progress=False)
    assert os.listdir(tmp_path) == ["in.jsonl"]


def test_crash_between_renames_never_pairs_old_index_with_new_data(demo, tmp_path, monkeypatch):
    prefix = str(tmp_path / "out")
    pipeline.preprocess(
        [write_jsonl(tmp_path / "a.jsonl", sample_texts(10))],
        str(demo.tokenizer),
        prefix,
        workers=0,
        progress=False,
    )
    real_replace = os.replace

    def fail_on_index(src, dst):
        if str(dst).endswith(".idx"):
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(indexed_writer.os, "replace", fail_on_index)
    with pytest.raises(OSError, match="killed"):
        pipeline.preprocess(
            [write_jsonl(tmp_path / "b.jsonl", sample_texts(30))],
            str(demo.tokenizer),
            prefix,
            workers=0,
            progress=False,
        )
    assert os.path.exists(prefix + ".bin")
    assert not IndexedDataset.exists(prefix)  # the new .bin has no .idx: not complete


def test_cli_prints_progress_and_summary(demo, tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", sample_texts(10))
    rc = main(
        [
            "preprocess",
            "--input",
            source,
            "--tokenizer",
            str(demo.tokenizer),
            "--output-prefix",
            str(tmp_path / "out"),
            "--workers",
            "0",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0
    assert re.search(
        r"^preprocess: 10 documents, [\d,]+ tokens, .* in [\d.]+s with 0 worker\(s\): "
        r"[\d,]+ docs/s, [\d,]+ tokens/s -> .*out\.bin/\.idx$",
        out,
        re.MULTILINE,
    ), out
    assert "0 bad records" in out
    assert "docs/s" in err and "tok/s" in err  # the progress bar


def test_cli_reports_bad_input_and_fails(demo, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"text": "ok"}\n{"txt": "typo"}\n')
    rc = main(
        [
            "preprocess",
            "--input",
            str(source),
            "--tokenizer",
            str(demo.tokenizer),
            "--output-prefix",
            str(tmp_path / "out"),
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 1
    assert "in.jsonl:2: missing-key: no key 'text' (keys: txt)" in capsys.readouterr().err
