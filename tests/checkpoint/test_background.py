"""Background checkpoints (checkpoint.async_save): a snapshot, written while training goes on,
published with the same atomicity as a synchronous save, or failing the same way."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from chatbaker_megatron.checkpoint.layout import iteration_dir, latest_checkpoint
from chatbaker_megatron.checkpoint.manifest import verify_local
from tests.checkpoint.test_integrity import _engine


def background_save_on_ranks(root: str, fail_on_rank1: bool) -> dict:
    """Iteration 4 saved synchronously, then 5 in the background while the weights change."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from torch import distributed as dist

    from chatbaker_megatron.checkpoint.background import BackgroundSaves
    from chatbaker_megatron.checkpoint.layout import CheckpointError
    from chatbaker_megatron.checkpoint.load import load_checkpoint
    from chatbaker_megatron.checkpoint.save import save_checkpoint
    from chatbaker_megatron.checkpoint.state import TrainState
    from chatbaker_megatron.model.sharding import full_state

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    engine = _engine()
    save_checkpoint(root, engine, TrainState(iteration=4), {"name": "t"}, keep_last=2)
    saves = BackgroundSaves()
    write_item = filesystem_async._write_item
    if fail_on_rank1 and dist.get_rank() == 1:
        filesystem_async._write_item = full_disk  # the forked writer inherits it
    try:
        snapshot = {k: v.clone() for k, v in full_state(engine.chunks).items()}
        saves.start(root, engine, TrainState(iteration=5), {"name": "t"}, keep_last=2)
    finally:
        filesystem_async._write_item = write_item
    # Training goes on: the weights change while the writer runs.
    with torch.no_grad():
        for param in engine.chunks[0].parameters():
            param.add_(1.0)
    latest_while_writing = latest_checkpoint(root)
    dist.barrier()  # every rank looked before any publishes
    try:
        published = saves.wait()
    except CheckpointError as err:
        return {"latest_while_writing": latest_while_writing, "error": str(err)}
    load_checkpoint(published, engine)
    loaded = full_state(engine.chunks)
    return {
        "latest_while_writing": latest_while_writing,
        "published": published,
        "snapshot_restored": all(torch.equal(loaded[k], v) for k, v in snapshot.items()),
    }


@pytest.mark.parametrize("fail", [False, True], ids=["written", "disk_full"])
def test_background_save_publishes_its_snapshot_atomically(ranks, tmp_path, fail):
    root = str(tmp_path / "checkpoints")
    results = ranks.run(2, background_save_on_ranks, root, fail)
    for result in results:
        # `latest` never points at a checkpoint some rank may still be writing.
        assert result["latest_while_writing"] == iteration_dir(root, 4)
    if not fail:
        assert [r["published"] for r in results] == [iteration_dir(root, 5)] * 2
        assert all(r["snapshot_restored"] for r in results)  # the weights at save time
        assert latest_checkpoint(root) == iteration_dir(root, 5)
        assert verify_local(iteration_dir(root, 5)) == []
        # The writers' own checksums were used and their bookkeeping files are gone.
        assert not [n for n in os.listdir(iteration_dir(root, 5)) if n.startswith(".chatbaker-")]
        return
    assert results[0]["error"] == results[1]["error"]
    assert "no space left on device (ENOSPC)" in results[0]["error"]
    assert "\n" not in results[0]["error"]
    assert latest_checkpoint(root) == iteration_dir(root, 4)
    assert sorted(os.listdir(root)) == ["iter_0000004", "latest"]  # no .tmp left behind
