"""What a checkpoint holds, shared by the writers and the loader.

Sharded (dist_checkpointing tensors and objects): `model0`, `model1`, ...
(one bare GPTModel per virtual pipeline stage, every tensor under its
global name, so it loads at any TP/PP/VPP), `optimizer` (in one of
`OPTIMIZER_FORMATS`, named by the common `optimizer_format`) and `rng_state`
(one object per rank position).

Common (plain objects, readable in any process with `read_common`): the
`config` of the run, `train_state`, the `topology` that wrote it and
`optimizer_kind` ("distributed", "local", or None for a weights-only
checkpoint), plus `scheduler` after training and `provenance` after an import.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from chatbaker_megatron import platform
from chatbaker_megatron.model.sharding import unwrap

if TYPE_CHECKING:
    from megatron.core.distributed import DistributedDataParallel

# How the distributed optimizer's state is written (megatron's sharding types;
# checkpoint.format / checkpoint.final_format choose, checkpoint/sizes.py
# measures them). dp_reshardable: each rank writes its own shard, no exchange;
# loads at another DP size only (same TP/PP/VPP). fully_reshardable: loads at
# any TP/PP/DP; mem_efficient: the state is gathered to DP rank 0 over gloo
# for the save instead of all-gathered to every rank (for 7B at TP2 that is
# ~42 GB of host memory on every rank). A local optimizer writes one format.
OPTIMIZER_FORMATS: dict[str, dict[str, Any]] = {
    "dp_reshardable": {"distrib_optim_sharding_type": "dp_reshardable"},
    "fully_reshardable": {
        "distrib_optim_sharding_type": "fully_reshardable",
        "distrib_optim_fully_reshardable_mem_efficient": True,
    },
}
# What a checkpoint written before the format was recorded holds.
LEGACY_OPTIMIZER_FORMAT = "fully_reshardable"


@dataclass
class TrainState:
    """Where training stands; saved with every checkpoint."""

    iteration: int = 0
    consumed_samples: int = 0
    consumed_valid_samples: int = 0
    skipped_steps: int = 0
    # fp16 updates skipped by the dynamic loss scaler backing off (not faults).
    skipped_overflows: int = 0
    # Loss-spike policy (training/health.py): updates skipped as spikes, and the
    # running mean of accepted losses with how many it has seen, so a resumed
    # run judges spikes as the uninterrupted one would.
    skipped_spikes: int = 0
    loss_ema: float | None = None
    loss_ema_steps: int = 0


class ModelAndOptimizer(Protocol):
    """What a full checkpoint saves and restores (training's Engine is one)."""

    chunks: list[DistributedDataParallel]
    optimizer: MegatronOptimizer
    scheduler: OptimizerParamScheduler


def read_common(path: str) -> dict[str, Any]:
    """The non-sharded part (config, train state, topology) of a checkpoint, on any process."""
    return dist_checkpointing.load_common_state_dict(path)


def common_state(
    config: dict[str, Any], state: TrainState, optimizer_kind: str | None
) -> dict[str, Any]:
    """The common entries every checkpoint has, whichever writer wrote it."""
    return {
        "config": config,
        "train_state": asdict(state),
        "topology": topology(),
        "optimizer_kind": optimizer_kind,
    }


def topology() -> dict[str, int]:
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
        "vpp": parallel_state.get_virtual_pipeline_model_parallel_world_size() or 1,
    }


def model_state(chunks: list[torch.nn.Module]) -> dict[str, Any]:
    # Keyed on the bare GPTModels: the DDP / Float16Module wrappers would add
    # "module." prefixes that tie checkpoints to the wrapping.
    return {f"model{i}": unwrap(chunk).sharded_state_dict() for i, chunk in enumerate(chunks)}


def optimizer_kind(parts: ModelAndOptimizer) -> str:
    distributed = parts.chunks[0].ddp_config.use_distributed_optimizer
    return "distributed" if distributed else "local"


def materialize_optimizer_state(parts: ModelAndOptimizer) -> None:
    """Give a fresh optimizer its state tensors, so a checkpoint can be loaded into them.

    megatron builds the optimizer's sharded state dict from existing state;
    one Adam step with zero gradients at lr 0 creates it without changing
    any weight (the loaded checkpoint then overwrites it).
    """
    for optimizer in getattr(parts.optimizer, "chained_optimizers", [parts.optimizer]):
        inner = optimizer.optimizer
        if all(len(inner.state.get(p, {})) for g in inner.param_groups for p in g["params"]):
            continue
        saved_lrs = [group["lr"] for group in inner.param_groups]
        for group in inner.param_groups:
            group["lr"] = 0.0
            for param in group["params"]:
                param.grad = torch.zeros_like(param)
        inner.step()
        inner.zero_grad()
        for group, lr in zip(inner.param_groups, saved_lrs):
            group["lr"] = lr


def rng_sharded_object() -> ShardedObject:
    """This rank's RNG state, one object per (pp, tp, dp) position."""
    pp, tp, dp = (
        parallel_state.get_pipeline_model_parallel_world_size(),
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_data_parallel_world_size(),
    )
    rank = (
        parallel_state.get_pipeline_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_data_parallel_rank(),
    )
    state = {
        **platform.detect().rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    return ShardedObject("rng_state", state, (pp, tp, dp), rank, replica_id=0)


def restore_rng_state(state: dict[str, Any]) -> None:
    platform.detect().set_rng_state(state)
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def data_parallel_group() -> Any:
    """The group the fully parallel save and load strategies split the work over."""
    return parallel_state.get_data_parallel_group(with_context_parallel=True)
