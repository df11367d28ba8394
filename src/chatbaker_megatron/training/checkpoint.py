"""Sharded, atomic, reshardable checkpoints on megatron-core dist_checkpointing.

Layout of `checkpoint.dir`:
    iter_0000200/        a complete checkpoint (dist_checkpointing format)
    iter_0000300.tmp/    a checkpoint being written (never loaded)
    latest               text file naming the newest complete checkpoint

Atomicity: every rank writes into `iter_N.tmp/`; after a barrier rank 0
renames it to `iter_N/` and then replaces `latest` (write to a temp file,
fsync, os.replace). A kill at any moment leaves `latest` naming a complete
checkpoint; leftover `.tmp` directories are removed at the next save.

What is saved: the model (per-tensor sharded, so it loads at any TP/PP/VPP),
the optimizer (megatron's `fully_reshardable` format, so it loads at any
TP/PP/DP; the distributed optimizer's state loads only into a distributed
optimizer, and likewise for the local one), the LR scheduler,
the training state (iteration, consumed samples, skipped steps), the RNG
states of every rank and the run's config.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.serialization import (
    get_default_load_sharded_strategy,
    get_default_save_sharded_strategy,
)
from megatron.core.dist_checkpointing.strategies.fully_parallel import (
    FullyParallelLoadStrategyWrapper,
    FullyParallelSaveStrategyWrapper,
)

from chatbaker_megatron import platform
from chatbaker_megatron.model.sharding import unwrap
from chatbaker_megatron.training.engine import Engine

log = logging.getLogger(__name__)

LATEST = "latest"
_ITER_DIR = re.compile(r"^iter_(\d{7})$")
# fully_reshardable: loads at any TP/PP/DP. mem_efficient: the distributed
# optimizer gathers its state to DP rank 0 over gloo for the save instead of
# all-gathering all of it to every rank (for 7B at TP2 that is ~42 GB of
# host memory on every rank); loads stay per-rank either way.
OPTIMIZER_FORMAT = {
    "distrib_optim_sharding_type": "fully_reshardable",
    "distrib_optim_fully_reshardable_mem_efficient": True,
}


@dataclass
class TrainState:
    """Where training stands; saved with every checkpoint."""

    iteration: int = 0
    consumed_samples: int = 0
    consumed_valid_samples: int = 0
    skipped_steps: int = 0


class CheckpointError(RuntimeError):
    pass


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def latest_checkpoint(root: str) -> str | None:
    """The directory `latest` names, or None when there is no complete checkpoint."""
    marker = os.path.join(root, LATEST)
    if not os.path.exists(marker):
        return None
    with open(marker, encoding="utf-8") as f:
        name = f.read().strip()
    path = os.path.join(root, name)
    if not _ITER_DIR.match(name) or not os.path.isdir(path):
        raise CheckpointError(
            f"{marker} names {name!r}, which is not a complete checkpoint directory in {root}"
        )
    return path


def _write_marker(root: str, name: str) -> None:
    tmp = os.path.join(root, f".{LATEST}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, LATEST))


def _rng_state() -> dict[str, Any]:
    return {
        **platform.detect().rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    platform.detect().set_rng_state(state)
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _data_parallel_group() -> Any:
    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def _save_strategy() -> Any:
    """megatron's default writer, with each replicated tensor written by one DP rank only."""
    return FullyParallelSaveStrategyWrapper(
        get_default_save_sharded_strategy(), _data_parallel_group()
    )


def _load_strategy(path: str) -> Any:
    """megatron's default reader, each DP rank reading a share and exchanging the rest."""
    return FullyParallelLoadStrategyWrapper(
        get_default_load_sharded_strategy(path), _data_parallel_group()
    )


def _rng_sharded_object() -> ShardedObject:
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
    return ShardedObject("rng_state", _rng_state(), (pp, tp, dp), rank, replica_id=0)


def _topology() -> dict[str, int]:
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
        "vpp": parallel_state.get_virtual_pipeline_model_parallel_world_size() or 1,
    }


def _uses_distributed_optimizer(engine: Engine) -> bool:
    return bool(engine.chunks[0].ddp_config.use_distributed_optimizer)


def _model_state(engine: Engine) -> dict[str, Any]:
    # Keyed on the bare GPTModels: the DDP / Float16Module wrappers would add
    # "module." prefixes that tie checkpoints to the wrapping.
    return {
        f"model{i}": unwrap(chunk).sharded_state_dict() for i, chunk in enumerate(engine.chunks)
    }


def _materialize_optimizer_state(engine: Engine) -> None:
    """Give a fresh optimizer its state tensors, so a checkpoint can be loaded into them.

    megatron builds the optimizer's sharded state dict from existing state;
    one Adam step with zero gradients at lr 0 creates it without changing
    any weight (the loaded checkpoint then overwrites it).
    """
    for optimizer in getattr(engine.optimizer, "chained_optimizers", [engine.optimizer]):
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


def save_checkpoint(
    root: str, engine: Engine, state: TrainState, config: dict[str, Any], keep_last: int
) -> str:
    """Write a complete checkpoint of this iteration atomically; prune older ones.

    Collective: every rank must call it.
    """
    final = iteration_dir(root, state.iteration)
    tmp = final + ".tmp"
    rank0 = dist.get_rank() == 0
    if rank0:
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):
            if name.endswith(".tmp") and os.path.isdir(os.path.join(root, name)):
                shutil.rmtree(os.path.join(root, name))
        if os.path.isdir(final):  # re-saving the same iteration (e.g. exit right after a save)
            shutil.rmtree(final)
        os.makedirs(tmp)
    dist.barrier()
    # A seed checkpoint (0 iterations) has an optimizer without state yet.
    _materialize_optimizer_state(engine)
    sharded = _model_state(engine)
    sharded["optimizer"] = engine.optimizer.sharded_state_dict(sharded, metadata=OPTIMIZER_FORMAT)
    sharded["scheduler"] = engine.scheduler.state_dict()
    sharded["train_state"] = asdict(state)
    sharded["config"] = config
    sharded["topology"] = _topology()
    sharded["optimizer_kind"] = "distributed" if _uses_distributed_optimizer(engine) else "local"
    sharded["rng_state"] = _rng_sharded_object()
    dist_checkpointing.save(sharded, tmp, sharded_strategy=_save_strategy())
    dist.barrier()
    if rank0:
        os.replace(tmp, final)
        _write_marker(root, os.path.basename(final))
        _prune(root, keep_last)
    dist.barrier()
    log.info("saved checkpoint %s", final)
    return final


def _prune(root: str, keep_last: int) -> None:
    iterations = sorted(
        int(m.group(1)) for m in (_ITER_DIR.match(n) for n in os.listdir(root)) if m
    )
    for iteration in iterations[:-keep_last]:
        shutil.rmtree(iteration_dir(root, iteration))


def read_common(path: str) -> dict[str, Any]:
    """The non-sharded part (config, train state, topology) of a checkpoint, on any process."""
    return dist_checkpointing.load_common_state_dict(path)


def load_checkpoint(path: str, engine: Engine, *, weights_only: bool = False) -> TrainState:
    """Load a checkpoint saved at any topology into this engine.

    `weights_only` loads the model and nothing else (e.g. PLM weights for
    SFT: fresh optimizer, scheduler and data position).
    """
    common = read_common(path)
    sharded = _model_state(engine)
    if weights_only:
        loaded = dist_checkpointing.load(sharded, path, sharded_strategy=_load_strategy(path))
    else:
        _materialize_optimizer_state(engine)
        sharded["optimizer"] = engine.optimizer.sharded_state_dict(
            sharded, is_loading=True, metadata=OPTIMIZER_FORMAT
        )
        saved_zero1 = common["optimizer_kind"] == "distributed"
        if saved_zero1 != _uses_distributed_optimizer(engine):
            raise CheckpointError(
                f"{path} holds {common['optimizer_kind']} optimizer state but this run uses "
                f"parallel.distributed_optimizer={not saved_zero1}; resume with the same setting "
                "(any TP/PP/DP works), or start from the weights alone with train.init_from"
            )
        same_topology = common.get("topology") == _topology()
        if same_topology:
            sharded["rng_state"] = _rng_sharded_object()
        loaded = dist_checkpointing.load(sharded, path, sharded_strategy=_load_strategy(path))
    for i, chunk in enumerate(engine.chunks):
        unwrap(chunk).load_state_dict(loaded[f"model{i}"])
    if weights_only:
        # bf16/fp16: the optimizer's fp32 main params were copied from the random
        # init; without this the first step would overwrite the loaded weights.
        engine.optimizer.reload_model_params()
        log.info("loaded model weights from %s", path)
        return TrainState()
    engine.optimizer.load_state_dict(loaded["optimizer"])
    engine.scheduler.load_state_dict(common["scheduler"])
    if "rng_state" in loaded:
        _set_rng_state(loaded["rng_state"])
    state = TrainState(**common["train_state"])
    log.info(
        "resumed from %s at iteration %d (saved at %s, now %s)",
        path,
        state.iteration,
        common.get("topology"),
        _topology(),
    )
    return state
