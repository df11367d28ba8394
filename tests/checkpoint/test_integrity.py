"""Checkpoint integrity: the manifest, verification before load, fallback, pruning, full disks.

One series of real 2-rank checkpoints of the tiny model (iterations 1-4, the
last two saved after non-finite steps, keep_last=2) is written once; each
test damages a copy of it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil

import pytest

from chatbaker_megatron.checkpoint.layout import iteration_dir, latest_checkpoint
from chatbaker_megatron.checkpoint.manifest import read_manifest, verify_local
from chatbaker_megatron.config.parallel import ParallelConfig

# Saved by save_series_on_ranks: (iteration, finite)
SERIES = [(1, True), (2, True), (3, False), (4, False)]
RANK1_SHARD = "__1_0.distcp"


def _engine():
    from tests.support.tiny_checkpoints import _engine

    return _engine(ParallelConfig())


def save_series_on_ranks(root: str) -> None:
    from chatbaker_megatron.checkpoint.save import save_checkpoint
    from chatbaker_megatron.checkpoint.state import TrainState

    engine = _engine()
    for iteration, finite in SERIES:
        state = TrainState(iteration=iteration, consumed_samples=2 * iteration)
        save_checkpoint(root, engine, state, {"name": "t"}, keep_last=2, finite=finite)


def resume_on_ranks(root: str, fallback: bool) -> int | str:
    """The iteration resumed, or the CheckpointError's message."""
    from chatbaker_megatron.checkpoint.layout import CheckpointError
    from chatbaker_megatron.checkpoint.load import resume_checkpoint

    try:
        return resume_checkpoint(root, _engine(), fallback=fallback).iteration
    except CheckpointError as err:
        return str(err)


def failing_save_on_ranks(root: str, failure: str) -> str:
    """Save iteration 5 with the disk full (`enospc`: rank 1's writer fails; `no_room`:
    too little free space up front); the CheckpointError's message."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from torch import distributed as dist

    from chatbaker_megatron.checkpoint import disk
    from chatbaker_megatron.checkpoint.layout import CheckpointError
    from chatbaker_megatron.checkpoint.save import save_checkpoint
    from chatbaker_megatron.checkpoint.state import TrainState

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    write_item, free_bytes = filesystem_async._write_item, disk.free_bytes
    if failure == "enospc" and dist.get_rank() == 1:
        filesystem_async._write_item = full_disk
    if failure == "no_room":
        disk.free_bytes = lambda path: 1000
    if failure == "first_save_full":
        # A full disk that gives no errno (torch's zip writer: "unexpected pos"), on the
        # first save: no earlier checkpoint to size it by (issue 25).
        def no_errno(*args, **kwargs):
            raise RuntimeError("unexpected pos 4096 vs 1024")

        filesystem_async._write_item = no_errno
        disk.free_bytes = lambda path: 0
    try:
        save_checkpoint(root, _engine(), TrainState(iteration=5), {"name": "t"}, keep_last=2)
        return "saved"
    except CheckpointError as err:
        return str(err)
    finally:
        filesystem_async._write_item, disk.free_bytes = write_item, free_bytes


@pytest.fixture(scope="module")
def saved(ranks, tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("series") / "checkpoints")
    ranks.run(2, save_series_on_ranks, root)
    return root


@pytest.fixture
def root(saved, tmp_path) -> str:
    """A copy of the series to damage."""
    return str(shutil.copytree(saved, tmp_path / "checkpoints"))


def corrupt(path: str) -> None:
    """4 KB of other bytes in the middle of a file, its size unchanged."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        block = f.read(4096)
        f.seek(-len(block), os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in block))


def truncate(path: str) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def test_manifest_records_every_file_its_writer_and_finiteness(saved):
    manifest = read_manifest(iteration_dir(saved, 4))
    names = sorted(os.listdir(iteration_dir(saved, 4)))
    assert sorted(manifest.files) == [n for n in names if n != "manifest.json"]
    assert {n: r.rank for n, r in manifest.files.items() if n.endswith(".distcp")} == {
        "__0_0.distcp": 0,
        RANK1_SHARD: 1,
    }
    assert manifest.files[".metadata"].rank == 0
    assert manifest.iteration == 4 and manifest.finite is False
    assert read_manifest(iteration_dir(saved, 2)).finite is True
    assert verify_local(iteration_dir(saved, 4)) == []


def test_pruning_never_drops_a_good_checkpoint_for_a_non_finite_one(saved):
    # keep_last=2 keeps 3 and 4 (both saved after non-finite steps), and the finite 1 and 2:
    # a good checkpoint goes only once keep_last newer good ones exist (issue 25).
    assert sorted(n for n in os.listdir(saved) if n.startswith("iter_")) == [
        "iter_0000001",
        "iter_0000002",
        "iter_0000003",
        "iter_0000004",
    ]


@pytest.mark.parametrize(
    ("damage", "name", "expected"),
    [
        (corrupt, RANK1_SHARD, "__1_0.distcp (written by rank 1) is corrupted"),
        (truncate, RANK1_SHARD, "__1_0.distcp (written by rank 1) is truncated"),
        (os.remove, ".metadata", ".metadata (written by rank 0) is missing"),
    ],
)
def test_damage_is_named_with_the_rank_that_wrote_the_file(root, damage, name, expected):
    path = iteration_dir(root, 4)
    damage(os.path.join(path, name))
    (problem,) = verify_local(path)
    assert problem.startswith(expected)


def test_export_and_generate_refuse_a_damaged_checkpoint(root, tmp_path, capsys):
    from chatbaker_megatron.checkpoint.layout import CheckpointError
    from chatbaker_megatron.checkpoint.reader import MegatronCheckpoint
    from chatbaker_megatron.cli import main

    truncate(os.path.join(iteration_dir(root, 4), RANK1_SHARD))
    with pytest.raises(CheckpointError, match=r"__1_0\.distcp \(written by rank 1\) is truncated"):
        MegatronCheckpoint(root)
    # The command says it in one line (issue 25: a 16-19 line traceback).
    assert main(["export-hf", "--checkpoint", root, "--output", str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert line.startswith("chatbaker export-hf: error: checkpoint ") and "is truncated" in line


def test_load_names_the_damaged_shard_then_falls_back_to_the_previous(ranks, root):
    corrupt(os.path.join(iteration_dir(root, 4), RANK1_SHARD))
    refused = ranks.run(2, resume_on_ranks, root, False)
    assert refused[0] == refused[1]
    assert refused[0].startswith(f"checkpoint {iteration_dir(root, 4)} failed verification: ")
    assert "__1_0.distcp (written by rank 1) is corrupted" in refused[0]
    assert "checkpoint.fallback=true would resume from" in refused[0]
    assert "\n" not in refused[0]
    assert latest_checkpoint(root) == iteration_dir(root, 4)  # nothing moved without fallback

    assert ranks.run(2, resume_on_ranks, root, True) == [3, 3]
    assert latest_checkpoint(root) == iteration_dir(root, 3)
    assert os.path.isdir(iteration_dir(root, 4) + ".corrupt")


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        ("enospc", "failed: no space left on device (ENOSPC); "),
        ("no_room", "not enough space to save a checkpoint in "),
    ],
)
def test_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(ranks, root, failure, expected):
    before = sorted(os.listdir(root))
    needed = read_manifest(iteration_dir(root, 4)).total_bytes
    messages = ranks.run(2, failing_save_on_ranks, root, failure)
    assert messages[0] == messages[1]
    assert expected.format(root=root) in messages[0]
    assert f"{needed:,}" in messages[0] and "\n" not in messages[0]
    assert sorted(os.listdir(root)) == before  # no .tmp left, nothing pruned
    assert latest_checkpoint(root) == iteration_dir(root, 4)
    assert verify_local(iteration_dir(root, 4)) == []


def resume_cases_on_ranks(cases: list[tuple[str, bool, bool]]) -> list[int | str | None]:
    """Per (root, fallback, allow_unverified): the iteration resumed, None (a fresh start)
    or the CheckpointError's message. One engine for all of them."""
    from chatbaker_megatron.checkpoint.layout import CheckpointError
    from chatbaker_megatron.checkpoint.load import resume_checkpoint

    engine = _engine()
    results: list[int | str | None] = []
    for root, fallback, allow_unverified in cases:
        try:
            state = resume_checkpoint(
                root, engine, fallback=fallback, allow_unverified=allow_unverified
            )
            results.append(None if state is None else state.iteration)
        except CheckpointError as err:
            results.append(str(err))
    return results


def test_unverifiable_checkpoints_and_a_damaged_latest(ranks, saved, tmp_path):
    """Issue 25: a checkpoint without manifest.json loaded unchecked; a `latest` with
    non-UTF-8 bytes, or naming a missing checkpoint, did not fall back to the intact ones;
    with every checkpoint set aside, removing them did not start afresh."""
    copies = {}
    for name in ("no_manifest", "no_manifest_allowed", "binary_latest", "strict", "gone", "all"):
        copies[name] = str(shutil.copytree(saved, tmp_path / name))
    for name in ("no_manifest", "no_manifest_allowed"):
        os.remove(os.path.join(iteration_dir(copies[name], 4), "manifest.json"))
    for name in ("binary_latest", "strict"):
        with open(os.path.join(copies[name], "latest"), "wb") as f:
            f.write(b"\xff\xfeiter\x00")
    shutil.rmtree(iteration_dir(copies["gone"], 4))
    for iteration in (1, 2, 3, 4):
        truncate(os.path.join(iteration_dir(copies["all"], iteration), RANK1_SHARD))
    cases = [
        (copies["no_manifest"], True, False),
        (copies["no_manifest_allowed"], False, True),
        (copies["binary_latest"], True, False),
        (copies["strict"], False, False),
        (copies["gone"], True, False),
        (copies["all"], True, False),
    ]
    results = ranks.run(2, resume_cases_on_ranks, cases)
    assert results[0] == results[1]
    no_manifest, allowed, binary_latest, strict, gone, everything = results[0]

    assert no_manifest == 3  # refused, set aside, the previous one resumed
    assert os.path.isdir(iteration_dir(copies["no_manifest"], 4) + ".corrupt")
    assert allowed == 4  # checkpoint.allow_unverified=true says so explicitly

    assert binary_latest == 4  # the newest complete checkpoint, and `latest` names it again
    assert latest_checkpoint(copies["binary_latest"]) == iteration_dir(copies["binary_latest"], 4)
    latest_file = os.path.join(copies["strict"], "latest")
    assert strict.startswith(f"{latest_file} is damaged: ") and "\n" not in strict
    assert gone == 3

    assert "remove them to start afresh" in everything
    for name in os.listdir(copies["all"]):
        if name.endswith(".corrupt"):
            shutil.rmtree(os.path.join(copies["all"], name))
    # The advice works: `latest` still names a removed checkpoint, and the run starts afresh.
    assert ranks.run(2, resume_cases_on_ranks, [(copies["all"], True, False)]) == [[None], [None]]


def test_a_checkpoint_without_a_manifest_is_named_unverifiable(root):
    path = iteration_dir(root, 4)
    os.remove(os.path.join(path, "manifest.json"))
    (problem,) = verify_local(path)
    assert problem.startswith("manifest.json is missing, so its files cannot be verified")
    assert "checkpoint.allow_unverified=true" in problem
    assert verify_local(path, allow_unverified=True) == []


def test_a_full_disk_at_the_first_save_says_so_and_how_much_is_needed(ranks, tmp_path):
    messages = ranks.run(2, failing_save_on_ranks, str(tmp_path / "checkpoints"), "first_save_full")
    assert messages[0] == messages[1]
    assert "failed: the disk is full (ENOSPC; the writer said " in messages[0], messages[0]
    assert re.search(r"; 0 bytes free, about [\d,]+ needed$", messages[0]), messages[0]
    assert "\n" not in messages[0]
