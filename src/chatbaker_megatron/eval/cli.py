"""`chatbaker eval --hf DIR --tasks LIST [--limit N] [--output DIR]`.

Runs lm-evaluation-harness zero-shot on an exported model folder and writes
results.json, results.md and results.png into --output (default
runs/eval/<folder name>). See eval/suites.py for what --tasks accepts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chatbaker_megatron.eval.report import write_report
from chatbaker_megatron.eval.runner import run_lm_eval
from chatbaker_megatron.eval.suites import resolve_tasks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hf", required=True, help="Hugging Face model folder (chatbaker export-hf)"
    )
    parser.add_argument(
        "--tasks",
        required=True,
        help="comma-separated suites (kobest, english, kobest_local, english_local) and/or task names",
    )
    parser.add_argument("--limit", type=int, default=None, help="at most N documents per task")
    parser.add_argument(
        "--output", default=None, help="report directory (default runs/eval/<model>)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda if present, else cpu)"
    )
    parser.add_argument("--seed", type=int, default=1234)


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit={args.limit}: expected >= 1")
    hf_dir = Path(args.hf).expanduser()
    tasks = resolve_tasks(args.tasks)
    results, meta = run_lm_eval(
        hf_dir,
        tasks,
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
    )
    output = Path(args.output) if args.output else Path("runs") / "eval" / hf_dir.resolve().name
    paths = write_report(output, hf_dir.resolve().name, results, meta)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
