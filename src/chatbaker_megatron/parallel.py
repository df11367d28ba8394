"""Process groups: torch.distributed + megatron-core parallel_state from a ParallelConfig."""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from chatbaker_megatron import platform
from chatbaker_megatron.config.parallel import ParallelConfig


class TopologyError(ValueError):
    """The requested parallel layout cannot be built from this world."""


def data_parallel_size(cfg: ParallelConfig, world_size: int) -> int:
    """world / (tp * pp * cp), or a TopologyError naming the keys that do not fit.

    The config-only checks (sp needs tp, vpp needs pp, ...) run earlier, in
    config/schema.validate; this one needs the world the process actually got.
    """
    model_parallel = cfg.tp * cfg.pp * cfg.cp
    if world_size % model_parallel:
        raise TopologyError(
            f"world size {world_size} is not divisible by parallel.tp * parallel.pp * parallel.cp "
            f"= {cfg.tp} * {cfg.pp} * {cfg.cp} = {model_parallel}"
        )
    dp = world_size // model_parallel
    if cfg.dp is not None and cfg.dp != dp:
        raise TopologyError(
            f"parallel.dp={cfg.dp} but world size {world_size} / (tp*pp*cp={model_parallel}) gives {dp}"
        )
    return dp


def _restart_attempt_store(timeout: datetime.timedelta) -> dist.Store | None:
    """The store of this torchrun restart attempt, or None (env:// as usual).

    torchrun's agent keeps one store for all attempts and the default group's
    keys carry no attempt number, so a restarted rank can read a dead rank's
    address (gloo: "Connection refused"; NCCL: a stale unique id) when its
    peer has not written the new one yet. A prefix per attempt keeps them apart.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        int(os.environ["WORLD_SIZE"]),
        is_master=False,
        timeout=timeout,
    )
    return dist.PrefixStore(f"attempt_{attempt}", store)


@dataclass(frozen=True)
class ParallelContext:
    """This process's place in the topology."""

    platform: platform.Platform
    world_size: int
    rank: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int


def initialize(
    cfg: ParallelConfig, *, seed: int, timeout_minutes: int = 30, trace_prefix: str | None = None
) -> ParallelContext:
    """Start torch.distributed (env:// as torchrun sets it) and megatron's process groups.

    A single process without torchrun's environment runs as a world of one.
    `timeout_minutes` bounds every collective; with `trace_prefix` the
    backend's collective trace (NCCL's flight recorder) is dumped to
    `trace_prefix`<rank> when one times out.
    """
    plat = platform.prepare_megatron()
    if not dist.is_initialized():
        if trace_prefix is not None:
            plat.enable_collective_trace(trace_prefix)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        timeout = datetime.timedelta(minutes=timeout_minutes)
        store = _restart_attempt_store(timeout)
        if store is None:
            plat.init_process_group(timeout=timeout)
        else:
            plat.init_process_group(
                timeout=timeout,
                store=store,
                rank=int(os.environ["RANK"]),
                world_size=int(os.environ["WORLD_SIZE"]),
            )
    else:
        plat.bind()
    world_size = dist.get_world_size()
    dp = data_parallel_size(cfg, world_size)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=cfg.tp,
        pipeline_model_parallel_size=cfg.pp,
        virtual_pipeline_model_parallel_size=cfg.vpp,
        context_parallel_size=cfg.cp,
        distributed_timeout_minutes=timeout_minutes,
    )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return ParallelContext(
        platform=plat,
        world_size=world_size,
        rank=dist.get_rank(),
        dp=dp,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
    )


def ensure_process_group() -> None:
    """A world of one for single-process tools (export, import, generate, chat), unless one exists.

    megatron's dist_checkpointing and parallel_state need a default process
    group even in one process. A file store in a fresh temporary directory
    is used instead of env:// so that a tool never binds a TCP port, and two
    tools (or a tool next to a training job) on one machine never collide.
    """
    if dist.is_initialized():
        return
    plat = platform.prepare_megatron()
    store_path = Path(tempfile.mkdtemp(prefix="chatbaker-pg-")) / "store"
    plat.init_process_group(
        store=dist.FileStore(str(store_path), 1),
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(minutes=30),
    )


def single_process_model_parallel(seed: int = 0) -> None:
    """megatron's parallel state for TP=1, PP=1 in this process (idempotent)."""
    ensure_process_group()
    if not parallel_state.model_parallel_is_initialized():
        initialize(ParallelConfig(), seed=seed)


def destroy_model_parallel() -> None:
    """Tear down megatron's groups but keep the default group (so the next test can re-init).

    megatron forgets its groups without destroying them; each gloo group keeps
    its own polling thread, so a process that re-initialises (the test pools,
    `chatbaker` tools run in one process) would pile them up and spend its
    CPU time in them.
    """
    parallel_state.destroy_model_parallel()
    world = dist.group.WORLD
    for group in list(dist.distributed_c10d._world.pg_map):
        if group is not world:
            dist.destroy_process_group(group)
