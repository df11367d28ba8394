"""Benchmark: `chatbaker preprocess --tasks N` (a datatrove job) against `chatbaker preprocess`.

    python -m benchmarks.tokenize_scaleout [--corpus-mb 20] [--shards 8]     (from the repo root)

Both read the same jsonl shards (built from the bundled samples like
benchmarks/preprocess.py's corpus) with the same tokenizer, trained here on
them. Rows, in one run:
- `chatbaker preprocess`: the single-process path (`preprocess()`, encoding
  in the main process: --workers 0; and --workers 2, its own encoding pool);
- `datatrove job`: `plan_job` + `run_job` with the local executor, 1 task
  (run in this process) and 2 tasks at once (two processes, each starting
  from datatrove's fork server: part of the cost);
  the time includes the merge of the parts into one dataset.
`equal_output`: the .bin and .idx are byte-identical to the first row's.
`measure()` is also what
benchmarks/curate.py prints for the curated shards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from chatbaker_megatron.config.executor import ExecutorConfig
from chatbaker_megatron.data.datasets.meta import read_meta
from chatbaker_megatron.data.preprocess import scaleout
from chatbaker_megatron.data.preprocess.pipeline import preprocess


def _same_files(prefix: str, reference: str) -> bool:
    return all(
        Path(prefix + suffix).read_bytes() == Path(reference + suffix).read_bytes()
        for suffix in (".bin", ".idx")
    )


def _row(method: str, tasks: int, seconds: float, docs: int, tokens: int, equal: bool) -> dict:
    return {
        "method": method,
        "tasks": tasks,
        "seconds": seconds,
        "docs/s": docs / seconds,
        "tokens/s": tokens / seconds,
        "equal_output": equal,
    }


def measure(shards: list[str], tokenizer_dir: str, workdir: str) -> list[dict]:
    """Time the single-process path and the datatrove job on `shards`; one dict per run."""
    os.makedirs(workdir, exist_ok=True)
    reference = os.path.join(workdir, "single")
    rows = []
    for workers in (0, 2):
        prefix = reference if workers == 0 else os.path.join(workdir, f"single_w{workers}")
        start = time.perf_counter()
        stats = preprocess(shards, tokenizer_dir, prefix, workers=workers, progress=False)
        seconds = time.perf_counter() - start
        rows.append(
            _row(
                f"chatbaker preprocess --workers {workers}",
                1,
                seconds,
                stats.docs,
                stats.tokens,
                _same_files(prefix, reference),
            )
        )
    for tasks in (1, 2):
        prefix = os.path.join(workdir, f"job{tasks}")
        shutil.rmtree(prefix + ".parts", ignore_errors=True)  # a fresh job, not a resumed one
        start = time.perf_counter()
        job = scaleout.plan_job(shards, tokenizer_dir, prefix, tasks)
        scaleout.run_job(job, ExecutorConfig(tasks=tasks, workers=tasks), progress=False)
        seconds = time.perf_counter() - start
        meta = read_meta(prefix)
        rows.append(
            _row(
                "datatrove job",
                job.tasks,
                seconds,
                meta["documents"],
                meta["tokens"],
                _same_files(prefix, reference),
            )
        )
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'method':<34} {'tasks':>5} {'seconds':>8} {'docs/s':>9} {'tokens/s':>11}  equal")
    for row in rows:
        print(
            f"{row['method']:<34} {row['tasks']:>5} {row['seconds']:>8.2f} "
            f"{row['docs/s']:>9,.0f} {row['tokens/s']:>11,.0f}  {row['equal_output']}"
        )


def main() -> None:
    from benchmarks.preprocess import build_corpus
    from chatbaker_megatron.data.tokenizer.train import train_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-mb", type=float, default=20.0, help="total size of the shards")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workdir", help="keep the files here (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        shards = []
        for i in range(args.shards):
            shards.append(str(work / f"shard-{i:03d}.jsonl"))
            build_corpus(Path(shards[-1]), args.corpus_mb / args.shards, seed=i)
        tokenizer = work / "tokenizer"
        train_tokenizer(
            shards[:1], tokenizer, vocab_size=8192, heldout_fraction=0.0, show_progress=False
        )
        print(
            f"{args.shards} shards, {args.corpus_mb:g} MiB; {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f} at the start"
        )
        print_rows(measure(shards, str(tokenizer), str(work / "out")))
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
