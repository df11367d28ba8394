"""`chatbaker preprocess --tasks N`: the same preprocessing as a datatrove job, then one merge.

The inputs are split into N runs of consecutive files with about equal bytes
(`split_contiguous`) or, when there are fewer files than tasks, into N runs of
line-aligned byte ranges (`byte_ranges.split_byte_ranges`: one big JSONL is
not one task); task r runs the single-process `preprocess` on its run
and writes `PREFIX.parts/part-<r>.bin/.idx/.meta.json` (through the same
atomic writer, so a killed task leaves no file that looks complete). A
second stage of one task, started when every tokenising task has finished,
appends the parts in rank order (their index entries, their .bin copied as
it is: `IndexedFileWriter.add_dataset`) into `PREFIX.bin/.idx` and removes
them. Consecutive runs in rank
order are the inputs in their given order, so the merged files are
byte-identical to a single-process `chatbaker preprocess` of the same
inputs; its `.meta.json` holds the same keys (inputs: all of them; counts:
the sums) plus `tasks` and `job` (the job's fingerprint).

With at least as many files as tasks, tasks take whole files (a large corpus
comes as many shards, and a task reads its files from the start, so bad
records are named by line number); inside a byte range that starts in the
middle of a file they are named by byte offset (`FILE:byte N`).

Resuming is datatrove's: a finished task leaves a completion marker in its
stage's logging folder and is skipped when the same command runs again; an
unfinished one starts over (its part is written whole or not at all). The
job's plan (`PREFIX.parts/job.json`: inputs with sizes and mtimes, tokenizer,
format, keys, task count) is fixed by the first run: a different plan finding
another job's parts is refused rather than mixed with them.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import sys
from dataclasses import dataclass

from datatrove.data import DocumentsPipeline
from datatrove.executor.base import PipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from chatbaker_megatron.atomic_files import replace_file
from chatbaker_megatron.config.executor import ExecutorConfig
from chatbaker_megatron.data.corpus import BadInputError
from chatbaker_megatron.data.datasets.indexed_files import dataset_exists, token_dtype
from chatbaker_megatron.data.datasets.meta import meta_path, read_meta
from chatbaker_megatron.data.executors import build_executor
from chatbaker_megatron.data.preprocess.byte_ranges import split_byte_ranges
from chatbaker_megatron.data.preprocess.indexed_writer import AtomicIndexedWriter
from chatbaker_megatron.data.preprocess.pipeline import check_arguments, preprocess
from chatbaker_megatron.data.templates import load_template
from chatbaker_megatron.data.tokenizer.load import load_tokenizer
from chatbaker_megatron.notices import hide_known_notices
from chatbaker_megatron.stop_signals import stop_signals_raise

JOB_FILE = "job.json"
PART_SUFFIXES = (".bin", ".idx", ".meta.json")


def split_contiguous(sizes: list[int], tasks: int) -> list[range]:
    """At most `tasks` non-empty runs of consecutive indices covering `sizes`, about equal sums."""
    count = min(tasks, len(sizes))
    cumulative = list(itertools.accumulate(sizes))
    total = cumulative[-1] if cumulative else 0
    bounds = [0]
    for k in range(1, count):
        target = total * k / count
        # End this run before or after the file that crosses the target, whichever is closer.
        crossing = bisect.bisect_left(cumulative, target)
        before = cumulative[crossing - 1] if crossing else 0
        end = crossing if target - before <= cumulative[crossing] - target else crossing + 1
        # Every run keeps at least one file, and leaves one for each run after it.
        bounds.append(max(bounds[-1] + 1, min(end, len(sizes) - (count - k))))
    bounds.append(len(sizes))
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


@dataclass(frozen=True)
class ScaleoutJob:
    """Everything a task needs: picklable, so SLURM array tasks get it through datatrove."""

    output_prefix: str
    inputs: tuple[str, ...]
    task_inputs: tuple[tuple[str, ...], ...]
    # Per task, per input: its byte range (start, end), or None for the whole file.
    task_ranges: tuple[tuple[tuple[int, int] | None, ...], ...]
    tokenizer_dir: str
    fmt: str
    json_key: str
    chat_template: str
    seq_length: int
    on_error: str
    encode_workers: int
    plan: str  # JSON of what the output depends on (job.json)
    encoder: str = "auto"  # not in the plan: every encoder gives the same output

    @property
    def tasks(self) -> int:
        return len(self.task_inputs)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.plan.encode()).hexdigest()

    @property
    def parts_dir(self) -> str:
        return self.output_prefix + ".parts"

    def part_prefix(self, rank: int) -> str:
        return os.path.join(self.parts_dir, f"part-{rank:05d}")


def plan_job(
    inputs: list[str],
    tokenizer_dir: str,
    output_prefix: str,
    tasks: int,
    *,
    fmt: str = "text",
    json_key: str = "text",
    chat_template: str = "chatbaker",
    seq_length: int = 2048,
    on_error: str = "fail",
    encode_workers: int = 0,
    encoder: str = "auto",
) -> ScaleoutJob:
    """The job for `inputs` (paths, in order) split over at most `tasks` tasks (one file at least each)."""
    if tasks < 1:
        raise ValueError(f"--tasks={tasks}: expected >= 1")
    check_arguments(inputs, fmt=fmt, workers=encode_workers, seq_length=seq_length)
    if fmt != "text":
        load_template(chat_template)  # an unknown template fails here, not in every task
    paths = [os.path.abspath(p) for p in inputs]
    stats = [os.stat(p) for p in paths]
    sizes = [s.st_size for s in stats]
    if len(paths) >= tasks:
        pieces = [[(i, 0, sizes[i]) for i in run] for run in split_contiguous(sizes, tasks)]
    else:
        pieces = split_byte_ranges(paths, sizes, tasks)
    plan = {
        "inputs": [[p, s.st_size, s.st_mtime_ns] for p, s in zip(paths, stats)],
        "tokenizer_sha256": load_tokenizer(tokenizer_dir).sha256,
        "format": fmt,
        "json_key": json_key if fmt == "text" else None,
        "chat_template": chat_template if fmt != "text" else None,
        "on_error": on_error,
        "tasks": len(pieces),
    }
    return ScaleoutJob(
        output_prefix=os.path.abspath(output_prefix),
        inputs=tuple(paths),
        task_inputs=tuple(tuple(paths[i] for i, _, _ in run) for run in pieces),
        task_ranges=tuple(
            tuple(None if (a, b) == (0, sizes[i]) else (a, b) for i, a, b in run) for run in pieces
        ),
        tokenizer_dir=os.path.abspath(tokenizer_dir),
        fmt=fmt,
        json_key=json_key,
        chat_template=chat_template,
        seq_length=seq_length,
        on_error=on_error,
        encode_workers=encode_workers,
        plan=json.dumps(plan, sort_keys=True),
        encoder=encoder,
    )


def _part_files(directory: str) -> list[str]:
    return sorted(
        name
        for name in os.listdir(directory)
        if name.startswith("part-") and name.endswith(PART_SUFFIXES)
    )


def _plan_difference(old: dict, new: dict) -> str:
    for key in sorted(new):
        if old.get(key) != new[key]:
            if key == "inputs":
                return "other input files, or inputs changed since"
            return f"{key} {old.get(key)!r} there, {new[key]!r} now"
    return "another plan"


def claim_parts_dir(job: ScaleoutJob) -> None:
    """Make `job` the owner of PREFIX.parts: keep it when it is this job's, start it afresh when it
    holds no parts of another job, refuse when it does (they would be lost or mixed)."""
    job_file = os.path.join(job.parts_dir, JOB_FILE)
    with contextlib.suppress(FileNotFoundError):
        with open(job_file, encoding="utf-8") as f:
            existing = f.read()
        if existing == job.plan:
            return
        if _part_files(job.parts_dir):
            raise BadInputError(
                f"{job.parts_dir} holds the parts of another preprocess job "
                f"({_plan_difference(json.loads(existing), json.loads(job.plan))}); rerun that "
                f"job's command to finish it, or remove {job.parts_dir} to start this one"
            )
        print(
            f"preprocess: {job.parts_dir} held a finished or empty job: replaced", file=sys.stderr
        )
        shutil.rmtree(job.parts_dir)
    os.makedirs(job.parts_dir, exist_ok=True)
    replace_file(job_file, job.plan)


def remove_parts(job: ScaleoutJob) -> None:
    for rank in range(job.tasks):
        for suffix in PART_SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                os.remove(job.part_prefix(rank) + suffix)


def merge_parts(job: ScaleoutJob) -> dict:
    """Append the parts in rank order into PREFIX.bin/.idx/.meta.json; returns the merged meta.

    Idempotent: when PREFIX already is this job's merge (a merge task stopped
    after committing), only the parts are removed.
    """
    merged = read_meta(job.output_prefix)
    if merged is not None and merged.get("job") == job.fingerprint:
        remove_parts(job)
        return merged
    metas = []
    for rank in range(job.tasks):
        prefix = job.part_prefix(rank)
        meta = read_meta(prefix)
        if meta is None or not dataset_exists(prefix):
            raise FileNotFoundError(
                f"{prefix}.bin/.idx: part {rank} of the job is missing (task {rank} did not "
                "finish); run the same command again to redo the unfinished tasks"
            )
        metas.append(meta)
    documents = sum(m["documents"] for m in metas)
    if documents == 0:
        raise BadInputError(f"no usable records in {', '.join(job.inputs)}")
    merged = {
        **metas[0],
        "inputs": list(job.inputs),
        "documents": documents,
        "tokens": sum(m["tokens"] for m in metas),
        "bad_records": sum(m["bad_records"] for m in metas),
        "tasks": job.tasks,
        "job": job.fingerprint,
    }
    dtype = token_dtype(merged["vocab_size"])
    with stop_signals_raise(), AtomicIndexedWriter(job.output_prefix, dtype) as writer:
        for path in writer.stale_removed:
            logger.info(f"removed {path}, left by a merge that no longer exists")
        for rank in range(job.tasks):
            writer.add_dataset(job.part_prefix(rank))
        writer.commit(merged)
    remove_parts(job)
    return merged


# Why not datatrove's own tokenizer steps: docs/data.md, "Beside datatrove's own tokenizers".
class TokenizeTask(PipelineStep):
    """Task r: `preprocess` of the r-th run of input files into part r."""

    name = "tokenize into a megatron indexed dataset part"
    type = "🔢 - TOKENIZER"

    def __init__(self, job: ScaleoutJob, progress: bool = True) -> None:
        super().__init__()
        self.job = job
        self.progress = progress

    def run(
        self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1
    ) -> DocumentsPipeline:
        hide_known_notices()  # a task process is the verb's child: same notices hidden
        job = self.job
        if world_size != job.tasks:
            raise ValueError(f"this job has {job.tasks} tasks, the executor runs {world_size}")
        # Timed: datatrove's stats (--verbose, stats/) then give the task's runtime.
        with self.track_time():
            stats = preprocess(
                list(job.task_inputs[rank]),
                job.tokenizer_dir,
                job.part_prefix(rank),
                fmt=job.fmt,
                json_key=job.json_key,
                workers=job.encode_workers,
                chat_template=job.chat_template,
                seq_length=job.seq_length,
                on_error=job.on_error,
                progress=self.progress,
                progress_label=f"task {rank + 1}/{world_size}",
                allow_empty=True,
                encoder=job.encoder,
                ranges=list(job.task_ranges[rank]),
            )
        logger.info(stats.summary())
        self.stat_update("documents", value=stats.docs)
        self.stat_update("tokens", value=stats.tokens)
        self.stat_update("bad_records", value=stats.errors.total)
        yield from data or ()


class MergeParts(PipelineStep):
    """The one task of the second stage: `merge_parts`."""

    name = "merge the parts into one indexed dataset"
    type = "🔗 - MERGE"

    def __init__(self, job: ScaleoutJob) -> None:
        super().__init__()
        self.job = job

    def run(
        self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1
    ) -> DocumentsPipeline:
        hide_known_notices()
        with self.track_time():
            meta = merge_parts(self.job)
        self.stat_update("documents", value=meta["documents"])
        self.stat_update("tokens", value=meta["tokens"])
        yield from data or ()


@dataclass
class JobExecutors:
    tokenize: PipelineExecutor
    merge: PipelineExecutor  # depends on tokenize: running it runs (or submits) both
    logging_root: str
    tasks_done_before: int = 0  # tokenising tasks a previous run finished


def job_executors(job: ScaleoutJob, cfg: ExecutorConfig, progress: bool = True) -> JobExecutors:
    """The two stages; their logs and completion markers under `cfg.logging_dir`/preprocess-<job>
    or, by default, PREFIX.parts/logs."""
    root = (
        os.path.join(cfg.logging_dir, f"preprocess-{job.fingerprint[:12]}")
        if cfg.logging_dir
        else os.path.join(job.parts_dir, "logs")
    )
    tokenize = build_executor(
        cfg,
        [TokenizeTask(job, progress)],
        os.path.join(root, "tokenize"),
        stage="tokenize",
        tasks=job.tasks,
    )
    merge = build_executor(
        cfg,
        [MergeParts(job)],
        os.path.join(root, "merge"),
        stage="merge",
        tasks=1,
        depends=tokenize,
    )
    return JobExecutors(tokenize, merge, root)


def run_job(job: ScaleoutJob, cfg: ExecutorConfig, progress: bool = True) -> JobExecutors:
    """Run (local) or submit (slurm) the unfinished stages of `job`; returns its executors."""
    claim_parts_dir(job)
    executors = job_executors(job, cfg, progress)
    merged = read_meta(job.output_prefix)
    if not executors.merge.get_incomplete_ranks() and (merged or {}).get("job") != job.fingerprint:
        # Finished before, but the output was removed or replaced since: the
        # parts are gone with it, so the whole job runs again.
        print(
            f"preprocess: {job.output_prefix}.bin/.idx is no longer this job's output: "
            "running the job again",
            file=sys.stderr,
        )
        shutil.rmtree(executors.logging_root)
        executors = job_executors(job, cfg, progress)
    executors.tasks_done_before = job.tasks - len(executors.tokenize.get_incomplete_ranks())
    executors.merge.run()
    return executors


def read_merged_meta(job: ScaleoutJob) -> dict:
    """The merged dataset's meta once a local run returned (its job fingerprint checked)."""
    meta = read_meta(job.output_prefix)
    if meta is None or meta.get("job") != job.fingerprint:
        raise FileNotFoundError(f"{meta_path(job.output_prefix)}: the job finished without it")
    return meta
