"""checkpoint/sizes.py: the figures `--dry-run` reports equal what real saves write and gather.

On 2 gloo ranks (DP=2, distributed optimizer) the tiny model is saved in
each optimizer format and as weights only; the tensor bytes each rank wrote
are read back from the checkpoint's own metadata (torch DCP's `.metadata`:
which file, so which rank, holds each chunk), independently of how
sizes.py counts them. Both ways of counting agree with it: with the real
exchange of shard lists between the DP ranks, and from one rank's view
alone (what the dry run can do).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter

import pytest
import torch

from chatbaker_megatron.config.parallel import ParallelConfig

FORMATS = ("dp_reshardable", "fully_reshardable")


def written_per_rank(path: str) -> dict[int, int]:
    """Tensor bytes per writing rank, from the checkpoint's DCP metadata."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(path).read_metadata()
    per_rank: Counter = Counter()
    for index, info in metadata.storage_data.items():
        tensor = metadata.state_dict_metadata[index.fqn]
        if not isinstance(tensor, TensorStorageMetadata):
            continue
        (chunk,) = [c for c in tensor.chunks if tuple(c.offsets) == tuple(index.offset)]
        numel = 1
        for size in chunk.sizes:
            numel *= size
        rank = int(re.match(r"__(\d+)_", info.relative_path).group(1))
        per_rank[rank] += numel * tensor.properties.dtype.itemsize
    return dict(per_rank)


def sizes_and_saves_on_ranks(root: str) -> dict:
    import torch.distributed as dist
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    from chatbaker_megatron.checkpoint.load import load_checkpoint
    from chatbaker_megatron.checkpoint.save import save_checkpoint, save_weights
    from chatbaker_megatron.checkpoint.sizes import checkpoint_cost
    from chatbaker_megatron.checkpoint.state import TrainState
    from tests.support.tiny_checkpoints import _engine

    engine = _engine(ParallelConfig(distributed_optimizer=True))
    exchanged = checkpoint_cost(engine)
    one_rank_view = checkpoint_cost(engine, one_rank_view=True)
    # What megatron's gather into host buffers returns, during a real save and a real load.
    buffers: list[int] = []
    gather = DistributedOptimizer.get_parameter_state_dp_zero

    def measured(self, *args, **kwargs):
        state = gather(self, *args, **kwargs)
        tensors = (
            []
            if state is None
            else [
                t
                for g in state.values()
                if isinstance(g, dict)
                for d in g.values()
                for t in d.values()
                if hasattr(t, "element_size")
            ]
        )
        buffers.append(sum(t.numel() * t.element_size() for t in tensors))
        return state

    DistributedOptimizer.get_parameter_state_dp_zero = measured
    paths, gathered, loaded, restored = {}, {}, {}, {}
    try:
        for fmt in FORMATS:
            buffers.clear()
            paths[fmt] = save_checkpoint(
                os.path.join(root, fmt),
                engine,
                TrainState(iteration=1),
                {"name": "t"},
                keep_last=1,
                optimizer_format=fmt,
            )
            gathered[fmt] = sum(buffers)
            saved = [t.detach().clone() for t in optimizer_tensors(engine)]
            with torch.no_grad():
                for tensor in optimizer_tensors(engine):
                    tensor.add_(1.0)  # so the load has something to restore
            buffers.clear()
            load_checkpoint(paths[fmt], engine)
            loaded[fmt] = sum(buffers)
            restored[fmt] = all(
                torch.equal(a, b) for a, b in zip(optimizer_tensors(engine), saved, strict=True)
            )
    finally:
        DistributedOptimizer.get_parameter_state_dp_zero = gather
    paths["weights"] = save_weights(os.path.join(root, "weights"), engine.chunks, {"name": "t"})
    return {
        "rank": dist.get_rank(),
        "exchanged": dataclasses.asdict(exchanged),
        "one_rank_view": dataclasses.asdict(one_rank_view),
        "gathered": gathered,
        "loaded": loaded,
        "restored": restored,
        "paths": paths,
    }


def optimizer_tensors(engine) -> list:
    """This rank's fp32 main weights, Adam moments and steps (the live tensors)."""
    return [
        tensor
        for opt in engine.optimizer.chained_optimizers
        for group in opt.optimizer.param_groups
        for param in group["params"]
        for tensor in (param, *opt.optimizer.state[param].values())
    ]


def load_both_at_dp1_on_ranks(paths: dict) -> bool:
    """The DP2 checkpoints of each format (saved from the same state) loaded at DP1: equal."""
    from chatbaker_megatron.checkpoint.load import load_checkpoint
    from tests.support.tiny_checkpoints import _engine

    engine = _engine(ParallelConfig(distributed_optimizer=True))
    states = []
    for fmt in FORMATS:
        load_checkpoint(paths[fmt], engine)
        states.append([t.detach().clone() for t in optimizer_tensors(engine)])
    return all(torch.equal(a, b) for a, b in zip(*states, strict=True))


def load_at_tp2_on_ranks(path: str) -> str | None:
    """A dp_reshardable checkpoint of DP2 loaded at TP2: the CheckpointError's message."""
    from chatbaker_megatron.checkpoint.layout import CheckpointError
    from chatbaker_megatron.checkpoint.load import load_checkpoint
    from tests.support.tiny_checkpoints import _engine

    try:
        load_checkpoint(path, _engine(ParallelConfig(tp=2, distributed_optimizer=True)))
    except CheckpointError as err:
        return str(err)
    return None


@pytest.fixture(scope="module")
def saves(ranks, tmp_path_factory):
    return ranks.run(2, sizes_and_saves_on_ranks, str(tmp_path_factory.mktemp("sizes")))


@pytest.mark.parametrize("counting", ["exchanged", "one_rank_view"])
def test_written_bytes_equal_what_each_rank_wrote(saves, counting):
    paths = saves[0]["paths"]
    for result in saves:
        rank, cost = result["rank"], result[counting]
        for fmt in FORMATS:
            actual = written_per_rank(paths[fmt]).get(rank, 0)
            assert cost["formats"][fmt]["written"] == actual, (counting, fmt, rank)
        assert cost["weights_written"] == written_per_rank(paths["weights"]).get(rank, 0)


def test_each_format_restores_the_optimizer_state(saves):
    for result in saves:
        assert result["restored"] == {fmt: True for fmt in FORMATS}


def test_dp_reshardable_refuses_another_model_parallel_layout(ranks, saves):
    messages = ranks.run(2, load_at_tp2_on_ranks, saves[0]["paths"]["dp_reshardable"])
    for message in messages:
        assert message is not None and "dp_reshardable" in message
        assert "tp=1, pp=1, vpp=1" in message and "tp=2, pp=1, vpp=1" in message
    # Another DP size is fine; fully_reshardable loads at TP2 (the resharding e2e tests
    # cover the values).
    assert ranks.run(1, load_both_at_dp1_on_ranks, saves[0]["paths"]) == [True]
    assert ranks.run(2, load_at_tp2_on_ranks, saves[0]["paths"]["fully_reshardable"]) == [
        None,
        None,
    ]


def test_gathered_and_load_buffers_equal_megatrons(saves):
    by_rank = {r["rank"]: r for r in saves}
    fully = {rank: r["exchanged"]["formats"]["fully_reshardable"] for rank, r in by_rank.items()}
    # fully_reshardable: DP rank 0 receives every rank's fp32 main weights and Adam moments.
    assert fully[0]["gathered"] == by_rank[0]["gathered"]["fully_reshardable"] > 0
    assert fully[1]["gathered"] == 0
    for rank, result in by_rank.items():
        assert fully[rank]["load_host"] == result["loaded"]["fully_reshardable"] > 0
        dp = result["exchanged"]["formats"]["dp_reshardable"]
        assert dp["gathered"] == dp["load_host"] == 0
        assert result["gathered"]["dp_reshardable"] == result["loaded"]["dp_reshardable"] == 0
    # Each rank writes its own optimizer shard in dp_reshardable; rank 0 writes all of it
    # in fully_reshardable.
    written = {
        fmt: [by_rank[r]["exchanged"]["formats"][fmt]["written"] for r in (0, 1)] for fmt in FORMATS
    }
    assert written["fully_reshardable"][0] > written["dp_reshardable"][0]
    assert written["fully_reshardable"][1] < written["dp_reshardable"][1]
