"""Benchmark: `chatbaker preprocess` (tiktoken / HF encoder) against Megatron-LM and the library.

    .venv/bin/python benchmarks/preprocess.py [--corpus-mb 10] [--workers 2] [--repeats 3]
        [--megatron-lm DIR]

Part 1, pretraining text. A jsonl corpus is built from the bundled
Korean/English samples and a tokenizer trained on them; then, alternating,
--repeats times each:
- `ours tiktoken`: `chatbaker preprocess --encoder tiktoken` (a process);
- `ours hf`: `chatbaker preprocess --encoder hf` (the `tokenizers` library);
- `megatron-lm` (with `--megatron-lm DIR`, a Megatron-LM checkout):
  `python DIR/tools/preprocess_data.py --tokenizer-type HuggingFaceTokenizer
  --append-eod`, run from DIR, with the same worker count;
- `library alone`: `encode_batch_fast` of the `tokenizers` library on the
  pre-parsed texts (the 1 MiB chunks the pipeline uses, in this process,
  its thread pool on every CPU: no JSON, no writing); and `tiktoken alone`,
  our fast encoder on the same texts and threads.
CPU seconds are those of each whole process tree (this process is made a
child subreaper, so every descendant, fork servers included, is reaped here
and counted in its children's rusage; its own rusage for the in-process rows), wall seconds the elapsed time; docs/s and tokens/s are by
wall time. Each figure is the median of the repeats (the machine may be
shared). `same` says whether the .bin/.idx files (or the ids, for the rows
of the library alone) are byte-identical to `ours hf`'s.

Part 2, SFT packing: conversations assembled from the bundled ShareGPT set
(1-6 turn pairs each), preprocessed with --format sft; packing efficiency of
best-fit-decreasing packing vs padding every conversation to the sequence
length (FastChat's `padding="max_length"`).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from chatbaker_megatron.data.datasets.packing import (
    one_per_bin,
    pack_best_fit_decreasing,
    packing_efficiency,
)
from chatbaker_megatron.data.demo.prepare import PRETRAIN_SAMPLES, SFT_SAMPLES
from chatbaker_megatron.data.preprocess.pipeline import preprocess
from chatbaker_megatron.data.tokenizer.fast import HFEncoder, TiktokenEncoder
from chatbaker_megatron.data.tokenizer.load import load_tokenizer
from chatbaker_megatron.data.tokenizer.train import train_tokenizer

CHATBAKER = str(Path(sys.executable).with_name("chatbaker"))


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def become_subreaper() -> None:
    """Orphaned descendants (a fork server outliving its parent) become our children, so that
    reaping them counts their CPU time in RUSAGE_CHILDREN (Linux's PR_SET_CHILD_SUBREAPER)."""
    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def reap_descendants(timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.02)
    raise SystemExit(f"descendants still running {timeout:.0f} s after their command ended")


def run_command(command: list[str], cwd: str | None = None) -> dict:
    """Wall and CPU seconds of a command's whole process tree (every descendant reaped)."""
    cpu, start = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    reap_descendants()
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return {"wall": wall, "cpu": _cpu(resource.RUSAGE_CHILDREN) - cpu}


def run_here(work: Callable[[], object]) -> tuple[dict, object]:
    cpu, start = _cpu(resource.RUSAGE_SELF), time.perf_counter()
    result = work()
    return {"wall": time.perf_counter() - start, "cpu": _cpu(resource.RUSAGE_SELF) - cpu}, result


def chunk_texts(corpus: Path, chunk_bytes: int = 1 << 20) -> list[list[str]]:
    """The corpus's texts in chunks of about `chunk_bytes` of input, as the pipeline batches them."""
    chunks, texts, size = [], [], 0
    with open(corpus, "rb") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(line)
            if size >= chunk_bytes:
                chunks.append(texts)
                texts, size = [], 0
    return [*chunks, texts] if texts else chunks


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


def _same(prefix: str, reference: str) -> bool:
    return all(
        Path(prefix + suffix).read_bytes() == Path(reference + suffix).read_bytes()
        for suffix in (".bin", ".idx")
    )


def text_benchmark(args: argparse.Namespace, work: Path, tokenizer_dir: str) -> None:
    corpus = work / "corpus.jsonl"
    docs = build_corpus(corpus, args.corpus_mb, args.seed)
    tokenizer = load_tokenizer(tokenizer_dir)
    threads = os.cpu_count() or 1
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    chunks = chunk_texts(corpus)
    library = HFEncoder(tokenizer.backend, "")
    fast = TiktokenEncoder.build(tokenizer.backend, threads)
    ours = [CHATBAKER, "preprocess", "--input", str(corpus), "--tokenizer", tokenizer_dir]
    ours += ["--workers", str(args.workers), "--no-progress", "--output-prefix"]
    commands = {
        "ours tiktoken": (ours + [str(work / "tiktoken"), "--encoder", "tiktoken"], None),
        "ours hf": (ours + [str(work / "hf"), "--encoder", "hf"], None),
    }
    outputs = {"ours tiktoken": "tiktoken", "ours hf": "hf", "megatron-lm": "mlm_text_document"}
    if args.megatron_lm:
        script = os.path.join(os.path.abspath(args.megatron_lm), "tools", "preprocess_data.py")
        commands["megatron-lm"] = (
            [sys.executable, script, "--input", str(corpus), "--output-prefix", str(work / "mlm")]
            + ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer_dir]
            + ["--append-eod", "--workers", str(args.workers), "--log-interval", "1000000"],
            args.megatron_lm,
        )
    print(
        f"corpus: {docs:,} documents, {corpus.stat().st_size / 2**20:.1f} MiB; "
        f"{args.workers} worker process(es) each; {threads} threads for the library rows; "
        f"median of {args.repeats} runs, alternating"
    )
    runs: dict[str, list[dict]] = {name: [] for name in [*commands, "library alone"]}
    runs["tiktoken alone"] = []
    ids: dict[str, list] = {}
    for _ in range(args.repeats):
        for name, (command, cwd) in commands.items():
            runs[name].append(run_command(command, cwd))
        for name, encoder in (("library alone", library), ("tiktoken alone", fast)):
            figures, ids[name] = run_here(lambda e=encoder: [e.encode_batch(c) for c in chunks])
            runs[name].append(figures)
    tokens = sum(len(d) + 1 for chunk in ids["library alone"] for d in chunk)  # eos included
    print(f"{'method':<15} {'CPU s':>7} {'wall s':>7} {'docs/s':>9} {'tokens/s':>11} {'same':>5}")
    medians = {}
    for name, figures in runs.items():
        cpu = statistics.median(f["cpu"] for f in figures)
        wall = statistics.median(f["wall"] for f in figures)
        medians[name] = (cpu, wall)
        if name in outputs:
            same = _same(str(work / outputs[name]), str(work / "hf"))
        else:
            same = ids[name] == ids["library alone"]
        print(
            f"{name:<15} {cpu:>7.2f} {wall:>7.2f} {docs / wall:>9,.0f} {tokens / wall:>11,.0f} "
            f"{'yes' if same else 'NO':>5}"
        )
    ratio = medians["library alone"][1] / medians["tiktoken alone"][1]
    print(f"tiktoken alone vs library alone: {ratio:.2f}x the speed, same texts and threads")
    if "megatron-lm" in medians:
        share = medians["ours tiktoken"][0] / medians["megatron-lm"][0]
        print(f"ours tiktoken CPU seconds: {share:.2f} of megatron-lm's")


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
    parser.add_argument("--corpus-mb", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--megatron-lm", metavar="DIR", help="a Megatron-LM checkout: add its preprocess_data.py"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=50_304)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the files here (default: a temporary directory)")
    args = parser.parse_args()
    become_subreaper()
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
