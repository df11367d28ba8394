"""Benchmark: `chatbaker preprocess` against Megatron-style one-document-at-a-time encoding.

    .venv/bin/python benchmarks/preprocess.py [--corpus-mb 30] [--workers N] [--repeats 3]

Part 1, pretraining text. Both pipelines read the same jsonl corpus (built
from the bundled Korean/English samples), use the same tokenizer and the
same number of worker processes, write through megatron's
IndexedDatasetBuilder, and must produce byte-identical .bin/.idx files.
- baseline: what Megatron-style preprocess scripts do: a multiprocessing
  Pool whose workers json-decode and encode one document per task
  (`pool.imap(encode, lines, 32)`), the main process writing every document
  as it arrives;
- chatbaker: chatbaker_megatron.data.preprocess.pipeline.preprocess, the function
  behind `chatbaker preprocess`: 1 MiB chunks, one encode_batch per chunk,
  flat numpy arrays back to the writer.
Each is run --repeats times, alternating, and the fastest run counts (the
machine may be shared). megatron is imported before any timing. The main
process's own CPU time is shown too: that serial work caps the rate no
matter how many workers run (docs / main CPU seconds).

Part 2, SFT packing: conversations assembled from the bundled ShareGPT set
(1-6 turn pairs each), preprocessed with --format sft; packing efficiency of
best-fit-decreasing packing vs padding every conversation to the sequence
length (FastChat's `padding="max_length"`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from chatbaker_megatron.data.datasets.packing import (
    one_per_bin,
    pack_best_fit_decreasing,
    packing_efficiency,
)
from chatbaker_megatron.data.demo.prepare import PRETRAIN_SAMPLES, SFT_SAMPLES
from chatbaker_megatron.data.preprocess.pipeline import preprocess
from chatbaker_megatron.data.tokenizer.load import load_tokenizer
from chatbaker_megatron.data.tokenizer.train import train_tokenizer

_baseline: dict = {}


def _baseline_init(tokenizer_file: str, json_key: str, eos_id: int) -> None:
    _baseline.update(tokenizer=Tokenizer.from_file(tokenizer_file), key=json_key, eos=eos_id)


def _baseline_encode(line: bytes) -> list[int]:
    text = json.loads(line)[_baseline["key"]]
    ids = _baseline["tokenizer"].encode(text, add_special_tokens=False).ids
    ids.append(_baseline["eos"])
    return ids


def baseline_preprocess(
    corpus: str, tokenizer_dir: str, prefix: str, workers: int
) -> tuple[int, int]:
    """One document per pool task, as Megatron-LM's tools/preprocess_data.py does it."""
    from chatbaker_megatron.data.preprocess.indexed_writer import IndexedDatasetBuilder, token_dtype

    tokenizer = load_tokenizer(tokenizer_dir)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=token_dtype(tokenizer.vocab_size))
    docs = tokens = 0
    init_args = (os.path.join(tokenizer_dir, "tokenizer.json"), "text", tokenizer.eos_id)
    with open(corpus, "rb") as f, multiprocessing.Pool(workers, _baseline_init, init_args) as pool:
        for ids in pool.imap(_baseline_encode, f, 32):
            builder.add_document(ids, [len(ids)])
            docs += 1
            tokens += len(ids)
    builder.finalize(prefix + ".idx")
    return docs, tokens


def chatbaker_preprocess(
    corpus: str, tokenizer_dir: str, prefix: str, workers: int
) -> tuple[int, int]:
    stats = preprocess([corpus], tokenizer_dir, prefix, workers=workers, progress=False)
    return stats.docs, stats.tokens


def _main_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(run: Callable[[], tuple[int, int]]) -> dict:
    cpu, start = _main_cpu_seconds(), time.perf_counter()
    docs, tokens = run()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "main_cpu": _main_cpu_seconds() - cpu,
        "docs": docs,
        "tokens": tokens,
    }


def build_corpus(path: Path, megabytes: float, seed: int) -> int:
    """Paragraph-sized documents of the bundled samples, drawn at random until the size is reached."""
    paragraphs = []
    for sample in PRETRAIN_SAMPLES.values():
        with open(sample, encoding="utf-8") as f:
            for line in f:
                paragraphs += [p for p in json.loads(line)["text"].split("\n\n") if p.strip()]
    rng = random.Random(seed)
    size = docs = 0
    with open(path, "w", encoding="utf-8") as f:
        while size < megabytes * 2**20:
            # 1-8 paragraphs per document: a spread of lengths like web text.
            text = "\n\n".join(rng.choice(paragraphs) for _ in range(rng.randint(1, 8)))
            line = json.dumps({"text": text, "id": docs}, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            docs += 1
    return docs


def build_conversations(path: Path, count: int, seed: int) -> None:
    """ShareGPT records of 1-6 (question, answer) pairs drawn from the bundled set."""
    records = json.loads(SFT_SAMPLES.read_text(encoding="utf-8"))
    pairs = []
    for record in records:
        turns = [t for t in record["conversations"] if t["from"] != "system"]
        pairs += [turns[i : i + 2] for i in range(0, len(turns) - 1, 2)]
    rng = random.Random(seed)
    out = [
        {
            "id": str(i),
            "conversations": [t for _ in range(rng.randint(1, 6)) for t in rng.choice(pairs)],
        }
        for i in range(count)
    ]
    path.write_text(json.dumps(out, ensure_ascii=False), encoding="utf-8")


def text_benchmark(args: argparse.Namespace, work: Path, tokenizer_dir: str) -> None:
    corpus = work / "corpus.jsonl"
    docs = build_corpus(corpus, args.corpus_mb, args.seed)
    print(
        f"corpus: {docs:,} documents, {corpus.stat().st_size / 2**20:.1f} MiB; "
        f"{args.workers} worker process(es) each; best of {args.repeats} runs"
    )
    runs: dict[str, list[dict]] = {"baseline": [], "chatbaker": []}
    methods = {"baseline": baseline_preprocess, "chatbaker": chatbaker_preprocess}
    for _ in range(args.repeats):
        for name, method in methods.items():
            prefix = str(work / name)
            runs[name].append(
                timed(lambda m=method, p=prefix: m(str(corpus), tokenizer_dir, p, args.workers))
            )
    for suffix in (".bin", ".idx"):
        same = (work / f"baseline{suffix}").read_bytes() == (
            work / f"chatbaker{suffix}"
        ).read_bytes()
        if not same:
            raise SystemExit(f"outputs differ ({suffix}): the comparison would be meaningless")
    print(
        f"{'method':<10} {'docs':>9} {'tokens':>11} {'wall s':>7} {'docs/s':>9} {'tokens/s':>11}"
        f" {'main CPU s':>10} {'serial limit docs/s':>19}"
    )
    best = {}
    for name, results in runs.items():
        r = best[name] = min(results, key=lambda x: x["seconds"])
        # Work the main process does alone bounds the rate whatever the worker count.
        limit = r["docs"] / r["main_cpu"]
        print(
            f"{name:<10} {r['docs']:>9,} {r['tokens']:>11,} {r['seconds']:>7.2f} "
            f"{r['docs'] / r['seconds']:>9,.0f} {r['tokens'] / r['seconds']:>11,.0f}"
            f" {r['main_cpu']:>10.2f} {limit:>19,.0f}"
        )
    ratio = best["baseline"]["seconds"] / best["chatbaker"]["seconds"]
    print(
        f"chatbaker preprocess vs baseline: {ratio:.2f}x docs/s and tokens/s "
        f"(identical .bin/.idx, {args.workers} worker processes each)"
    )


def sft_benchmark(args: argparse.Namespace, work: Path, tokenizer_dir: str) -> None:
    source = work / "conversations.json"
    build_conversations(source, args.conversations, args.seed)
    stats = preprocess(
        [str(source)],
        tokenizer_dir,
        str(work / "sft"),
        fmt="sft",
        workers=args.workers,
        seq_length=args.seq_length,
        progress=False,
    )
    print(stats.summary().splitlines()[-1])
    lengths = np.concatenate(stats.fitted_lengths)
    lengths = lengths[lengths > 0]
    packed = pack_best_fit_decreasing(lengths, args.seq_length)
    padded = one_per_bin(len(lengths), args.seq_length)
    print(f"{'batching':<28} {'sequences':>9} {'efficiency':>10}")
    print(
        f"{'pad to max length (FastChat)':<28} {len(padded):>9,} "
        f"{packing_efficiency(lengths, padded):>10.1%}"
    )
    print(
        f"{'best-fit-decreasing packing':<28} {len(packed):>9,} "
        f"{packing_efficiency(lengths, packed):>10.1%}"
    )
    print(
        f"packing needs {len(padded) / len(packed):.1f}x fewer sequences for the same "
        f"{int(lengths.sum()):,} tokens at seq length {args.seq_length}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-mb", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=50_304)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the files here (default: a temporary directory)")
    args = parser.parse_args()
    # Imported here, not at the top: worker processes import this module again
    # and need none of megatron; imported before timing so no run pays for it.
    import chatbaker_megatron.data.preprocess.indexed_writer  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = train_tokenizer(
            [str(p) for p in PRETRAIN_SAMPLES.values()],
            work / "tokenizer",
            vocab_size=args.vocab_size,
            heldout_fraction=0.0,
            show_progress=False,
        )
        size = result.tokenizer.get_vocab_size()
        short = (
            f" (of {args.vocab_size:,} asked: no more merges in the samples)"
            if size < args.vocab_size
            else ""
        )
        print(f"tokenizer: {size:,} ids{short}")
        text_benchmark(args, work, str(work / "tokenizer"))
        sft_benchmark(args, work, str(work / "tokenizer"))


if __name__ == "__main__":
    main()
