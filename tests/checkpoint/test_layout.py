"""The checkpoints directory: iteration directories, the `latest` marker, pruning (no model needed)."""

from __future__ import annotations

import os

import pytest

from chatbaker_megatron.checkpoint.layout import (
    CheckpointError,
    iteration_dir,
    latest_checkpoint,
    prune,
    remove_partial,
    resolve_checkpoint,
    write_latest,
)


def make_checkpoint(root: str, iteration: int) -> str:
    path = iteration_dir(root, iteration)
    os.makedirs(path)
    open(os.path.join(path, "metadata.json"), "w").close()
    return path


def test_latest_names_the_newest_complete_checkpoint(tmp_path):
    root = str(tmp_path)
    assert latest_checkpoint(root) is None
    make_checkpoint(root, 100)
    path = make_checkpoint(root, 200)
    write_latest(root, "iter_0000200")
    assert latest_checkpoint(root) == path
    assert resolve_checkpoint(root) == resolve_checkpoint(path) == tmp_path / "iter_0000200"
    assert sorted(os.listdir(root)) == ["iter_0000100", "iter_0000200", "latest"]


def test_latest_naming_no_checkpoint_is_an_error(tmp_path):
    write_latest(str(tmp_path), "iter_0000300")
    with pytest.raises(CheckpointError, match="names 'iter_0000300', which is not a complete"):
        latest_checkpoint(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        resolve_checkpoint(tmp_path / "empty")


def test_prune_keeps_the_newest_and_partial_writes_go(tmp_path):
    root = str(tmp_path)
    for iteration in (1, 2, 3):
        make_checkpoint(root, iteration)
    os.makedirs(iteration_dir(root, 4) + ".tmp")
    remove_partial(root)
    prune(root, keep_last=2)
    assert sorted(os.listdir(root)) == ["iter_0000002", "iter_0000003"]
