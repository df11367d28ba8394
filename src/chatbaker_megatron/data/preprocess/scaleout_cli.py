"""The scale-out options of `chatbaker preprocess` (--tasks, --executor, SLURM) and that path's run.

Kept apart from cli.py so that the single-process path and `--help` never
import datatrove; the executor keys are the ones of `ExecutorConfig`, the
same as `chatbaker curate`'s `executor` group, so one preset file serves both.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time

from chatbaker_megatron.config.executor import ExecutorConfig, ExecutorKind, load_executor_config

# CLI option dest -> ExecutorConfig key, for the options that set one.
EXECUTOR_OPTIONS = {
    "executor": "kind",
    "tasks": "tasks",
    "concurrent_tasks": "workers",
    "logging_dir": "logging_dir",
    "partition": "partition",
    "time": "time",
    "cpus_per_task": "cpus_per_task",
    "mem_per_cpu_gb": "mem_per_cpu_gb",
    "qos": "qos",
    "job_name": "job_name",
    "env_command": "env_command",
}


def add_scaleout_arguments(parser: argparse.ArgumentParser) -> None:
    job = parser.add_argument_group(
        "scale-out: a datatrove job (any of --tasks, --executor, --executor-config)"
    )
    job.add_argument(
        "--tasks",
        type=int,
        metavar="N",
        help="split the inputs into N runs of consecutive files (fewer files than N: of "
        "line-aligned byte ranges), tokenise each in its own task, then merge them into PREFIX "
        "(byte-identical to the single-process output); the same command again runs only the "
        "unfinished tasks",
    )
    job.add_argument(
        "--executor",
        choices=list(ExecutorKind),
        help="local: processes on this machine (default); slurm: submit a job array with sbatch",
    )
    job.add_argument(
        "--executor-config",
        metavar="YAML",
        help="executor keys (kind, tasks, workers, logging_dir, partition, time, ...) from a file, "
        "or the `executor:` of a curate preset; the options here override it",
    )
    job.add_argument(
        "--concurrent-tasks",
        type=int,
        metavar="N",
        help="tasks running at once (executor.workers; default: all)",
    )
    job.add_argument(
        "--logging-dir",
        metavar="DIR",
        help="datatrove's logs, stats and completion markers (default: PREFIX.parts/logs)",
    )
    slurm = parser.add_argument_group("SLURM (--executor slurm)")
    slurm.add_argument("--partition", help="sbatch --partition (required)")
    slurm.add_argument("--time", help="sbatch --time per task (default: 24:00:00)")
    slurm.add_argument("--cpus-per-task", type=int, metavar="N", help="default: 1")
    slurm.add_argument("--mem-per-cpu-gb", type=int, metavar="GB", help="default: 2")
    slurm.add_argument("--qos", help="sbatch --qos (default: the partition's)")
    slurm.add_argument("--job-name", help="SLURM job name prefix (default: chatbaker)")
    slurm.add_argument(
        "--env-command",
        metavar="SHELL",
        help="run by each task before the job (default: activate this virtual environment)",
    )


def is_scaleout(args: argparse.Namespace) -> bool:
    return any(getattr(args, name) is not None for name in ("tasks", "executor", "executor_config"))


def executor_config(args: argparse.Namespace) -> ExecutorConfig:
    """The preset file (if any), then the options given on the command line, validated."""
    cfg = load_executor_config(args.executor_config) if args.executor_config else ExecutorConfig()
    overrides = {
        key: getattr(args, dest)
        for dest, key in EXECUTOR_OPTIONS.items()
        if getattr(args, dest) is not None
    }
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    return cfg


def _submitted(label: str, job_id: str | int | None) -> str:
    return f"{label}: already done" if job_id in (None, -1) else f"{label}: SLURM job {job_id}"


def run_scaleout(args: argparse.Namespace, inputs: list[str]) -> int:
    """Run the job here (local) and print its summary, or submit it (slurm) and say where it goes."""
    from chatbaker_megatron.data.preprocess import scaleout

    cfg = executor_config(args)
    if args.workers is not None:
        encode_workers = args.workers
    else:  # locally the tasks are the processes; a SLURM task has its own cores
        encode_workers = cfg.cpus_per_task if cfg.kind == "slurm" and cfg.cpus_per_task > 1 else 0
    job = scaleout.plan_job(
        inputs,
        args.tokenizer,
        args.output_prefix,
        cfg.tasks,
        fmt=args.fmt,
        json_key=args.json_key,
        chat_template=args.chat_template,
        seq_length=args.seq_length,
        on_error=args.on_error,
        encode_workers=encode_workers,
        encoder=args.encoder,
    )
    if job.tasks < cfg.tasks:
        print(
            f"preprocess: {job.tasks} task(s), not {cfg.tasks}: the inputs hold no more "
            "parts (a task takes whole lines, and .json or .gz files whole)",
            file=sys.stderr,
        )
    start = time.perf_counter()
    try:  # progress bars locally; a SLURM task's log is a file
        executors = scaleout.run_job(job, cfg, progress=args.progress and cfg.kind == "local")
    except FileNotFoundError as err:
        if err.filename != "sbatch":
            raise
        raise FileNotFoundError(
            "sbatch: not found; --executor slurm submits the job with sbatch, "
            "run it on the cluster's login node"
        ) from None
    except subprocess.CalledProcessError as err:
        raise ValueError(f"sbatch failed (exit code {err.returncode}): {err.output!r}") from None
    if cfg.kind == "slurm":
        print(
            f"preprocess: {_submitted(f'{job.tasks} tokenising task(s)', executors.tokenize.job_id)}"
            f"; {_submitted('merge', executors.merge.job_id)}; output {job.output_prefix}.bin/.idx "
            f"when the merge ends; logs and completion markers in {executors.logging_root}"
        )
        return 0
    seconds = time.perf_counter() - start
    meta = scaleout.read_merged_meta(job)
    rate = seconds or float("inf")
    unit = "conversations" if args.fmt == "sft" else "documents"
    done = executors.tasks_done_before
    resumed = f" ({done} of them finished by an earlier run)" if done else ""
    print(
        f"preprocess: {meta['documents']:,} {unit}, {meta['tokens']:,} tokens from "
        f"{len(inputs)} file(s) in {seconds:.1f}s with {job.tasks} task(s){resumed}: "
        f"{meta['documents'] / rate:,.0f} docs/s, {meta['tokens'] / rate:,.0f} tokens/s "
        f"-> {job.output_prefix}.bin/.idx"
    )
    bad = meta["bad_records"]
    where = f"{executors.logging_root}/tokenize/logs"
    print(
        f"skipped {bad} bad records (each task's log in {where} names them)"
        if bad
        else "0 bad records"
    )
    return 0
