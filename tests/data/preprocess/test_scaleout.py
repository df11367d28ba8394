"""`chatbaker preprocess --tasks N`: the datatrove job's merged output is the single-process output.

The reference is `preprocess()` of the same shards in one process (an
independent path: no datatrove, no parts, no merge). The job runs in this
process (local executor, one task at a time), and on SLURM through a stand-in
`sbatch` that records the scripts, whose array tasks are then run here the
way `launch_pickled_pipeline` runs them on a node.
"""

import contextlib
import io
import itertools
import json
import os
import signal
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dill
import numpy as np
import pytest

from chatbaker_megatron.cli import main
from chatbaker_megatron.config.data import DataConfig, DatasetConfig
from chatbaker_megatron.config.executor import ExecutorConfig
from chatbaker_megatron.data.corpus import BadInputError
from chatbaker_megatron.data.datasets.meta import read_meta
from chatbaker_megatron.data.datasets.pretrain import build_pretrain_datasets
from chatbaker_megatron.data.demo.prepare import PRETRAIN_SAMPLES
from chatbaker_megatron.data.preprocess import byte_ranges, pipeline, scaleout

JOB_KEYS = ("tasks", "job")  # what the merged meta adds to the single-process one


@dataclass(frozen=True)
class Corpus:
    shards: list[str]  # the bundled corpus dealt into shards of different sizes
    single: str  # their single-process preprocess


@pytest.fixture(scope="module")
def corpus(demo, tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("scaleout")
    lines = []
    for path in PRETRAIN_SAMPLES.values():
        lines += path.read_bytes().splitlines(keepends=True)
    cuts = [len(lines) * share // 100 for share in (0, 10, 30, 45, 80, 100)]
    shards = []
    for i, (begin, end) in enumerate(itertools.pairwise(cuts)):
        shards.append(str(root / f"shard-{i}.jsonl"))
        Path(shards[-1]).write_bytes(b"".join(lines[begin:end]))
    single = str(root / "single")
    pipeline.preprocess(shards, str(demo.tokenizer), single, workers=0, progress=False)
    return Corpus(shards, single)


def assert_same_dataset(prefix: str, reference: str) -> None:
    for suffix in (".bin", ".idx"):
        assert Path(prefix + suffix).read_bytes() == Path(reference + suffix).read_bytes(), suffix
    merged, single = read_meta(prefix), read_meta(reference)
    assert {k: v for k, v in merged.items() if k not in JOB_KEYS} == single


def leftovers(directory: str) -> list[str]:
    """Part or partial files anywhere under `directory`."""
    return [
        name
        for _, _, files in os.walk(directory)
        for name in files
        if name.startswith("part-") or ".partial-" in name
    ]


@pytest.fixture(scope="module")
def merged(corpus, demo, tmp_path_factory) -> tuple[str, str]:
    """The CLI's local job over a glob of the shards, 3 tasks one at a time: (prefix, stdout)."""
    prefix = str(tmp_path_factory.mktemp("merged") / "all")
    pattern = os.path.join(os.path.dirname(corpus.shards[0]), "shard-*.jsonl")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["preprocess", "--input", pattern, "--tokenizer", str(demo.tokenizer)]
            + [
                "--output-prefix",
                prefix,
                "--tasks",
                "3",
                "--concurrent-tasks",
                "1",
                "--no-progress",
            ]
        )
    assert code == 0
    return prefix, out.getvalue()


def test_merged_job_output_is_byte_identical_to_one_process(merged, corpus):
    prefix, stdout = merged
    assert_same_dataset(prefix, corpus.single)
    meta = read_meta(prefix)
    assert meta["tasks"] == 3 and meta["inputs"] == corpus.shards
    assert (
        f"preprocess: {meta['documents']:,} documents, {meta['tokens']:,} tokens from 5 file(s)"
        in (stdout)
    )
    assert "with 3 task(s)" in stdout and "0 bad records" in stdout
    # The parts are gone once merged; the job's plan and logs stay for a rerun.
    assert leftovers(prefix + ".parts") == []
    assert sorted(os.listdir(prefix + ".parts")) == ["job.json", "logs"]


def test_merged_dataset_loads_in_the_pretrain_builder(merged, tokenizer, tmp_path):
    prefix, _ = merged
    cfg = DataConfig(
        root=os.path.dirname(prefix),
        datasets=[DatasetConfig(name="all", path=os.path.basename(prefix), weight=1.0)],
        cache_dir=str(tmp_path),
    )
    train, valid, _ = build_pretrain_datasets(
        cfg, tokenizer=tokenizer, seq_length=64, seed=1, num_samples=(200, 20, 20)
    )
    assert len(train) >= 200 and len(valid) >= 20
    tokens = np.concatenate([train[i]["tokens"].numpy() for i in range(0, 200, 7)])
    assert tokens.max() < tokenizer.vocab_size and (tokens == tokenizer.eos_id).any()


def test_a_rerun_after_an_interrupted_task_redoes_only_unfinished_tasks(
    corpus, demo, tmp_path, monkeypatch
):
    prefix = str(tmp_path / "out")
    real_preprocess = scaleout.preprocess
    calls: list[int] = []  # the ranks whose preprocess ran
    killed = {1}
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()

    def preprocess_until_killed(inputs, tokenizer_dir, output_prefix, **kwargs):
        rank = int(output_prefix.rsplit("-", 1)[1])
        calls.append(rank)
        if rank in killed:
            # What a kill -9 of the task leaves: its writer's partial files.
            for suffix in (".bin", ".idx"):
                Path(f"{output_prefix}.partial-{host}-{dead.pid}{suffix}").write_bytes(b"x")
            raise RuntimeError("task 1 killed")
        return real_preprocess(inputs, tokenizer_dir, output_prefix, **kwargs)

    def job(tasks: int) -> scaleout.ScaleoutJob:
        return scaleout.plan_job(corpus.shards, str(demo.tokenizer), prefix, tasks)

    cfg = ExecutorConfig(tasks=3, workers=1)
    monkeypatch.setattr(scaleout, "preprocess", preprocess_until_killed)
    with pytest.raises(RuntimeError, match="task 1 killed"):
        scaleout.run_job(job(3), cfg, progress=False)
    assert calls == [0, 1] and not os.path.exists(prefix + ".idx")
    assert os.path.exists(job(3).part_prefix(0) + ".idx")

    # Another plan is refused while this job's parts are there: never mixed.
    with pytest.raises(BadInputError, match=r"another preprocess job \(tasks 3 there, 2 now\)"):
        scaleout.run_job(job(2), ExecutorConfig(tasks=2, workers=1), progress=False)

    calls.clear()
    killed.clear()
    executors = scaleout.run_job(job(3), cfg, progress=False)
    assert calls == [1, 2] and executors.tasks_done_before == 1  # task 0 finished before
    assert executors.tokenize.get_incomplete_ranks() == []
    assert_same_dataset(prefix, corpus.single)
    assert leftovers(str(tmp_path)) == []

    # Once more: everything is done, nothing runs, the output stays.
    calls.clear()
    scaleout.run_job(job(3), cfg, progress=False)
    assert calls == []
    assert_same_dataset(prefix, corpus.single)


def test_contiguous_split_balances_bytes_and_keeps_order():
    assert scaleout.split_contiguous([10, 10, 10, 10], 2) == [range(0, 2), range(2, 4)]
    assert scaleout.split_contiguous([100, 1, 1, 1, 1], 2) == [range(0, 1), range(1, 5)]
    # Never an empty task, never more tasks than files.
    assert scaleout.split_contiguous([1, 1, 100], 3) == [range(0, 1), range(1, 2), range(2, 3)]
    assert scaleout.split_contiguous([5, 5], 4) == [range(0, 1), range(1, 2)]


FAKE_SBATCH = """#!/bin/sh
# Records each submission (its arguments and script) and answers like sbatch.
n=$(ls "{log}" | wc -l)
{{ echo "$@"; cat "$(eval echo \\${{$#}})"; }} > "{log}/$n.txt"
echo "Submitted batch job $((100 + n))"
"""


def test_slurm_submits_an_array_and_a_dependent_merge(corpus, demo, tmp_path, monkeypatch):
    log, bin_dir = tmp_path / "sbatch_log", tmp_path / "bin"
    log.mkdir()
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(log=log))
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho localhost\n")  # show hostnames
    for tool in ("sbatch", "scontrol"):
        (bin_dir / tool).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    prefix, logs = str(tmp_path / "out"), str(tmp_path / "logs")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["preprocess", "--input", *corpus.shards, "--tokenizer", str(demo.tokenizer)]
            + ["--output-prefix", prefix, "--tasks", "2", "--time", "2:00:00"]
            # The curate SLURM preset (partition cpu, 4 GB per CPU, job name curate).
            + ["--executor-config", "slurm", "--logging-dir", logs]
        )
    assert code == 0
    submissions = [(log / f"{i}.txt").read_text() for i in range(len(os.listdir(log)))]
    array = next(s for s in submissions if "--job-name=curate_tokenize" in s)
    merge = next(s for s in submissions if "--job-name=curate_merge" in s)
    for line in ("--partition=cpu", "--mem-per-cpu=4G", "--time=2:00:00", "--array=0-1"):
        assert f"#SBATCH {line}\n" in array
    assert "launch_pickled_pipeline" in array
    assert "--array=0-0" in merge and "--dependency=afterok:100" in merge.splitlines()[0]
    assert "tokenising task(s): SLURM job 100" in out.getvalue()
    assert not os.path.exists(prefix + ".idx")

    # What each array task runs on its node: the pickled executor, rank from the array id.
    monkeypatch.setenv("SLURM_NODELIST", "localhost")
    job_dir = next(Path(logs).iterdir())
    previous = signal.getsignal(signal.SIGUSR1)  # datatrove sets its requeue handler
    try:
        for stage, tasks in (("tokenize", 2), ("merge", 1)):
            with open(job_dir / stage / "executor.pik", "rb") as f:
                executor = dill.load(f)
            for task in range(tasks):
                monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
                executor.run()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert_same_dataset(prefix, corpus.single)
    assert json.loads(Path(prefix + ".parts/job.json").read_text())["tasks"] == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--executor", "slurm"], "executor.partition: required for kind=slurm"),
        (["--executor", "slurm", "--partition", "cpu", "--time", "1 day"], "executor.time='1 day'"),
        (["--tasks", "0"], "executor.tasks=0: expected >= 1"),
        (["--executor-config", "nowhere.yaml"], "nowhere.yaml: no such executor config file"),
    ],
)
def test_bad_executor_settings_are_named(options, message, corpus, demo, tmp_path, capsys):
    code = main(
        ["preprocess", "--input", *corpus.shards, "--tokenizer", str(demo.tokenizer)]
        + ["--output-prefix", str(tmp_path / "out"), *options]
    )
    assert code == 1 and message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_an_empty_shard_is_an_empty_part(corpus, demo, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    inputs = [corpus.shards[0], str(empty), corpus.shards[2]]
    reference = str(tmp_path / "single")
    pipeline.preprocess(inputs, str(demo.tokenizer), reference, workers=0, progress=False)
    job = scaleout.plan_job(inputs, str(demo.tokenizer), str(tmp_path / "out"), 3)
    assert job.task_inputs[1] == (str(empty),)
    scaleout.run_job(job, ExecutorConfig(tasks=3, workers=1), progress=False)
    assert_same_dataset(job.output_prefix, reference)


def test_byte_ranges_hold_whole_lines_in_order_with_about_equal_bytes(tmp_path):
    lines = [b'{"text": "%s"}\n' % (b"x" * (i % 50)) for i in range(400)]
    big = tmp_path / "big.jsonl"
    big.write_bytes(b"".join(lines))
    whole = tmp_path / "small.json"
    whole.write_bytes(b"[" + b" " * 300 + b"]")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    paths = [str(big), str(empty), str(whole)]
    sizes = [os.path.getsize(p) for p in paths]
    runs = byte_ranges.split_byte_ranges(paths, sizes, 4)
    assert len(runs) == 4
    pieces = [piece for run in runs for piece in run]
    # In order, contiguous, covering every byte; the empty file and the .json whole.
    assert [i for i, _, _ in pieces] == [0, 0, 0, 0, 1, 2]
    assert pieces[-2:] == [(1, 0, 0), (2, 0, sizes[2])]
    big_pieces = [(a, b) for i, a, b in pieces if i == 0]
    assert big_pieces[0][0] == 0 and big_pieces[-1][1] == sizes[0]
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(big_pieces))
    data = big.read_bytes()
    for a, _ in big_pieces:
        assert a == 0 or data[a - 1 : a] == b"\n"  # starts at a line start
    per_run = [sum(b - a for _, a, b in run) for run in runs]
    assert max(per_run) - min(per_run) < 120  # about a quarter each, up to a line
    assert byte_ranges.split_byte_ranges([str(big)], [sizes[0]], 10_000)[-1][-1][2] == sizes[0]
    assert len(byte_ranges.split_byte_ranges([str(whole)], [sizes[2]], 3)) == 1


def test_one_big_jsonl_is_split_across_tasks_into_the_same_output(corpus, demo, tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_bytes(b"".join(Path(p).read_bytes() for p in corpus.shards) + b"{oops\n")
    job = scaleout.plan_job(
        [str(big)], str(demo.tokenizer), str(tmp_path / "out"), 3, on_error="skip"
    )
    assert job.tasks == 3 and all(r[0] is not None for r in job.task_ranges)
    scaleout.run_job(job, ExecutorConfig(tasks=3, workers=1), progress=False)
    for suffix in (".bin", ".idx"):
        assert (
            Path(job.output_prefix + suffix).read_bytes()
            == Path(corpus.single + suffix).read_bytes()
        )
    assert read_meta(job.output_prefix)["bad_records"] == 1
