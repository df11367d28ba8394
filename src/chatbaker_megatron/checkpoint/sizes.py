"""What each checkpoint format costs each rank: the bytes it writes, gathers and loads.

Read off the real sharded state dicts of a built model and optimizer
(megatron-core 0.19's code paths), so the figures hold for fake tensors
(the dry run) as for real ones:

- written: the tensor bytes this rank writes, after megatron's fully
  parallel save strategy spreads the replicated tensors over the data
  parallel group (`determine_main_replica_uniform_distribution`, the
  function the save itself calls);
- gathered: the host bytes the save gathers into this rank. The distributed
  optimizer's `fully_reshardable` format copies every DP rank's fp32 main
  weights and Adam moments into host buffers on DP rank 0
  (`get_parameter_state_dp_zero`) before writing them, and DP rank 0 then
  writes all of them; `dp_reshardable` writes each rank's own shard, no
  exchange;
- load_host: the host buffers a load allocates on this rank: with
  `fully_reshardable` every rank reads the whole optimizer state of its
  model-parallel shard into those same buffers, then keeps its slice; with
  `dp_reshardable` each rank reads its own shard into the optimizer directly.

Only tensors are counted: the few kilobytes of pickled objects (RNG state,
parameter groups, the common state) are left out.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch.distributed as dist
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.exchange_utils import (
    _shard_size,
    determine_main_replica_uniform_distribution,
)
from megatron.core.dist_checkpointing.mapping import ShardedTensor, is_main_replica
from megatron.core.dist_checkpointing.state_dict_utils import save_preprocess
from megatron.core.dist_checkpointing.utils import _sharded_tensor_shard_id
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

from chatbaker_megatron.checkpoint.state import (
    OPTIMIZER_FORMATS,
    ModelAndOptimizer,
    data_parallel_group,
    materialize_optimizer_state,
    model_state,
)

# Keys of the optimizer tensors each format writes (megatron's distrib_optimizer.py):
# dp_reshardable's per-DP-rank bucket shards, fully_reshardable's per-parameter state.
DP_SHARD_PREFIX = "optimizer.distributed."
GATHERED_PREFIX = "optimizer.state."
# What exchange_utils.determine_main_replica_uniform_distribution reads of a shard.
_DISTRIBUTION_FIELDS = (
    "key",
    "global_offset",
    "flattened_range",
    "local_shape",
    "dtype",
    "replica_id",
)


@dataclasses.dataclass(frozen=True)
class FormatCost:
    written: int  # tensor bytes this rank writes for a training checkpoint
    gathered: int  # host bytes gathered into this rank during the save
    load_host: int  # host bytes a load allocates on this rank


@dataclasses.dataclass(frozen=True)
class CheckpointCost:
    weights_written: int  # tensor bytes this rank writes for a weights-only checkpoint
    formats: dict[str, FormatCost]  # per optimizer format (OPTIMIZER_FORMATS)


def _shards(sharded: dict[str, Any]) -> list[ShardedTensor]:
    """The ShardedTensors a save of `sharded` writes from (factories applied, as the save does)."""
    part, _ = save_preprocess(sharded, validate_access_integrity=False)
    return [v for v in nested_values(part) if isinstance(v, ShardedTensor)]


@dataclasses.dataclass(frozen=True)
class PeerLayout:
    """What the other ranks of this rank's DP group hold, as this rank can tell alone."""

    # fully_reshardable's optimizer state as DP rank 0 holds it for the save.
    gathered: list[ShardedTensor]
    # Per dp_reshardable bucket key: (elements per DP rank, elements without the padding).
    buckets: dict[str, tuple[int, int]]


def _stand_in(shard: ShardedTensor, **changes: Any) -> SimpleNamespace:
    """What megatron's save distribution reads of `shard` (its id, size and replica id),
    with `changes`: a stand-in, cheap enough for peer lists of tens of thousands of shards."""
    fields = {name: getattr(shard, name) for name in _DISTRIBUTION_FIELDS}
    return SimpleNamespace(**(fields | changes))


def peer_shards(
    shards: list[ShardedTensor], peer: int, me: int, layout: PeerLayout
) -> list[ShardedTensor | SimpleNamespace]:
    """The shards DP rank `peer` holds, from DP rank `me`'s (a dry run sees one rank only).

    A DP group's ranks hold the same model shards, whose replica ids end in
    the DP rank; megatron's distribution asks only which ranks hold a shard
    and whether one holds its main replica, so DP rank 0's copy is the only
    one that must differ from this rank's. Each rank holds its own slice of
    every dp_reshardable bucket (the bucket's elements from peer * per-rank,
    up to the unpadded end); DP rank 0 alone holds fully_reshardable's
    gathered state.
    """
    own: list[ShardedTensor | SimpleNamespace] = []
    seen: set[str] = set()
    for shard in shards:
        if shard.key.startswith(GATHERED_PREFIX):
            continue
        if shard.key.startswith(DP_SHARD_PREFIX) and peer != me:
            if shard.key in seen:
                continue
            seen.add(shard.key)
            per_rank, unpadded = layout.buckets[shard.key.rsplit(".", 1)[0]]
            numel = min(per_rank, max(0, unpadded - peer * per_rank))
            if numel:
                own.append(
                    _stand_in(
                        shard,
                        key=f"{shard.key}@{peer}",
                        local_shape=(numel,),
                        global_shape=(numel,),
                        global_offset=(0,),
                    )
                )
        elif peer == 0 != me and isinstance(shard.replica_id, tuple):
            own.append(_stand_in(shard, replica_id=(*shard.replica_id[:-1], 0)))
        else:
            own.append(shard)
    if peer == 0:
        own += [_stand_in(s, replica_id=(*s.replica_id[:-1], 0)) for s in layout.gathered]
    return own


@contextlib.contextmanager
def _peers_from_this_rank(layout: PeerLayout) -> Iterator[None]:
    """megatron's gather of every DP rank's shard list, answered with `peer_shards`."""
    all_gather_object = dist.all_gather_object
    me = dist.get_rank(data_parallel_group())

    # dist.all_gather_object's signature; megatron passes this rank's shard list as `obj`.
    def gather(
        object_list: list[Any], obj: Any, group: Any = None, weights_only: bool = False
    ) -> None:
        object_list[:] = [peer_shards(obj, p, me, layout) for p in range(len(object_list))]

    dist.all_gather_object = gather
    try:
        yield
    finally:
        dist.all_gather_object = all_gather_object


def written_bytes(sharded: dict[str, Any], peers: PeerLayout | None = None) -> int:
    """Tensor bytes this rank writes when `sharded` is saved with the fully parallel strategy.

    `peers`: None in a real world (the DP ranks' shard lists are exchanged as
    the save exchanges them); in a one-rank view of the world (the dry run),
    what the other DP ranks hold (`peer_shards`).
    """
    shards = _shards(sharded)
    group = data_parallel_group()
    with _peers_from_this_rank(peers) if peers is not None else contextlib.nullcontext():
        distribution = determine_main_replica_uniform_distribution(shards, group)
    if distribution is None:  # a DP group of one: each main replica is written where it is
        return int(sum(_shard_size(s) for s in shards if is_main_replica(s.replica_id)))
    me = dist.get_rank(group)
    total = 0
    for shard in shards:
        shard_id = _sharded_tensor_shard_id(shard)
        if distribution.main_rank_for_shard.get(shard_id) == me:
            total += int(_shard_size(shard))  # numpy's, from megatron
    return total


def _distributed_optimizers(parts: ModelAndOptimizer) -> list[DistributedOptimizer]:
    chained = getattr(parts.optimizer, "chained_optimizers", [parts.optimizer])
    return [opt for opt in chained if isinstance(opt, DistributedOptimizer)]


def _dp_buckets(parts: ModelAndOptimizer) -> dict[str, tuple[int, int]]:
    """dp_reshardable's bucket keys (as distrib_optimizer.py names them) and their sizes."""
    buckets = {}
    for opt in _distributed_optimizers(parts):
        dp = opt.data_parallel_group.size()
        for g, ranges in enumerate(opt.gbuf_ranges):
            for dtype in ranges:
                for b, bucket in enumerate(opt.buffers[g].buckets):
                    key = (
                        f"{DP_SHARD_PREFIX}dp_group_idx_{opt.data_parallel_group_idx}"
                        f".gbuf_idx_{g}.dtype_{dtype}.bucket_idx_{b}"
                    )
                    buckets[key] = (bucket.grad_data.numel() // dp, bucket.numel_unpadded)
    return buckets


def _gather_buffers_bytes(parts: ModelAndOptimizer) -> int:
    """Host bytes of fully_reshardable's gather buffers (megatron's own allocation, empty)."""
    total = 0
    for opt in _distributed_optimizers(parts):
        state = opt.get_parameter_state_dp_zero(
            use_gloo_comm=True, empty_data=True, return_on_all_ranks=True
        )
        for gbuf in (v for k, v in state.items() if k != "buckets_coalesced"):
            for per_dtype in gbuf.values():
                total += sum(
                    t.numel() * t.element_size()
                    for t in per_dtype.values()
                    if hasattr(t, "element_size")
                )
    return total


def _peer_layout(parts: ModelAndOptimizer) -> PeerLayout:
    model = model_state(parts.chunks)
    loading = parts.optimizer.sharded_state_dict(
        model, is_loading=True, metadata=OPTIMIZER_FORMATS["fully_reshardable"]
    )
    # On loading every rank holds the state DP rank 0 gathers for the save.
    gathered = [s for s in _shards({"optimizer": loading}) if s.key.startswith(GATHERED_PREFIX)]
    return PeerLayout(gathered, _dp_buckets(parts))


def checkpoint_cost(parts: ModelAndOptimizer, one_rank_view: bool = False) -> CheckpointCost:
    """Collective (every rank calls it): this rank's CheckpointCost.

    `one_rank_view`: the other DP ranks are not there to ask (the dry run's
    fake world); what they hold is derived from this rank (`peer_shards`).
    """
    materialize_optimizer_state(parts)
    dp_rank = dist.get_rank(data_parallel_group())
    buffers = _gather_buffers_bytes(parts)
    layout = _peer_layout(parts) if one_rank_view else None
    no_gather = None if layout is None else dataclasses.replace(layout, gathered=[])
    weights_written = written_bytes(model_state(parts.chunks), no_gather)
    formats = {}
    for name, metadata in OPTIMIZER_FORMATS.items():
        gathers = name == "fully_reshardable"
        sharded = model_state(parts.chunks)
        if gathers and layout is not None:
            # What the save's gather would hand DP rank 0, without running it: at
            # 128 DP ranks its receive buffers alone are ~10^4 (fake) tensors.
            sharded["optimizer"] = layout.gathered if dp_rank == 0 else []
        else:
            sharded["optimizer"] = parts.optimizer.sharded_state_dict(sharded, metadata=metadata)
        formats[name] = FormatCost(
            written=written_bytes(sharded, layout if gathers else no_gather),
            gathered=buffers if gathers and dp_rank == 0 else 0,
            load_host=buffers if gathers else 0,
        )
    return CheckpointCost(weights_written, formats)
