"""Which device this process computes on, and how its collectives reach the others.

`detect()` returns the `Platform`: CUDA + NCCL on the process's local GPU
when one is present, CPU + gloo otherwise. It is the one device authority of
the project: every tensor the project creates for a collective, every model
placement, RNG capture and process group goes through it, so the GPU path is
the CPU path with another device in it rather than a second code path.

NCCL only moves tensors that live on the GPU; gloo moves host tensors. A
process group's "collective device" is therefore the compute device for the
default (NCCL) groups and the host for the gloo groups the project opens for
long host-side waits (`host_group`), as Megatron-LM does for its own
object exchanges.

Without CUDA the process computes on the host unless it was given another
CPU device (`use_cpu_compute_device`): the same memory, but a distinct value,
so that a tool watching where tensors live can tell a tensor moved to the
compute device from one made on the host, as a GPU run can.
"""

from __future__ import annotations

import datetime
import os
import time
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

HOST = torch.device("cpu")

# Weak: a destroyed group must be freed (each gloo group keeps a polling thread).
_host_groups: weakref.WeakSet = weakref.WeakSet()
_cpu_compute_device = HOST


def mark_host_group(group: Any) -> None:
    """Record `group` as a gloo group whose collectives move host tensors."""
    _host_groups.add(group)


def is_host_group(group: Any) -> bool:
    return group in _host_groups


def use_cpu_compute_device(device: torch.device) -> None:
    """Compute on `device`, a CPU device, when CUDA is absent (by default on `HOST`).

    Call it before `prepare_megatron()`: the CPU compat layer maps megatron's
    "cuda" to the device `detect()` gives then.
    """
    if device.type != "cpu":
        raise ValueError(f"{device} is not a CPU device")
    global _cpu_compute_device
    _cpu_compute_device = device


@dataclass(frozen=True)
class Platform:
    """Where this process computes and how it talks to the others."""

    device: torch.device
    backend: str  # torch.distributed backend of the default group: "nccl" or "gloo"

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def inference_dtype(self) -> torch.dtype:
        """What generation runs in: bf16 on a GPU (fast, and what flash-attn takes), fp32 on CPU."""
        return torch.bfloat16 if self.is_cuda else torch.float32

    def collective_device(self, group: Any = None) -> torch.device:
        """Where a tensor must live to take part in a collective on `group`."""
        if group is not None and is_host_group(group):
            return HOST
        return self.device

    def tensor(
        self, data: Any, *, dtype: torch.dtype | None = None, group: Any = None
    ) -> torch.Tensor:
        """A tensor ready for a collective on `group` (default: the NCCL/gloo world)."""
        return torch.tensor(data, dtype=dtype, device=self.collective_device(group))

    def bind(self) -> None:
        """Make this process's GPU the current one (NCCL and object collectives use it)."""
        if self.is_cuda:
            torch.cuda.set_device(self.device)

    def init_process_group(
        self, *, timeout: datetime.timedelta, store: Any = None, rank: int | None = None,
        world_size: int | None = None,
    ) -> None:  # fmt: skip
        """Start the default process group on this platform's backend (env:// unless a store)."""
        self.bind()
        kwargs: dict[str, Any] = {"backend": self.backend, "timeout": timeout}
        if store is not None:
            kwargs.update(store=store, rank=rank, world_size=world_size)
        dist.init_process_group(**kwargs)

    def enable_collective_trace(self, dump_prefix: str) -> None:
        """Have NCCL record its recent collectives and dump them to `dump_prefix`<rank> on a timeout.

        NCCL's flight recorder, configured through the environment before the
        process group starts (values already set win); gloo has none.
        """
        if self.backend != "nccl":
            return
        os.makedirs(os.path.dirname(dump_prefix), exist_ok=True)
        os.environ.setdefault("TORCH_NCCL_TRACE_BUFFER_SIZE", "2000")
        os.environ.setdefault("TORCH_NCCL_DUMP_ON_TIMEOUT", "1")
        os.environ.setdefault("TORCH_NCCL_DEBUG_INFO_TEMP_FILE", dump_prefix)

    def dump_collective_trace(self, path: str) -> bool:
        """Write NCCL's flight recorder (pickled, as on a timeout) to `path`; False on gloo."""
        if self.backend != "nccl":
            return False
        # Private, in NCCL builds only: torch's stubs omit it.
        from torch._C._distributed_c10d import _dump_nccl_trace  # type: ignore[attr-defined]

        with open(path, "wb") as f:
            f.write(_dump_nccl_trace())
        return True

    def timestamp(self) -> Any:
        """A point in this process's compute stream: a recorded CUDA event on GPU, else a clock reading."""
        if self.is_cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds_between(self, start: Any, end: Any) -> float:
        """Device time between two `timestamp()`s (waits for the later one on GPU)."""
        if self.is_cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        return end - start

    def host_group(self, timeout: datetime.timedelta) -> Any:
        """A gloo group over all ranks for host-side waits longer than the NCCL timeout.

        Collective: every rank must call it. Its tensors live on the host.
        """
        group = dist.new_group(backend="gloo", timeout=timeout)
        mark_host_group(group)
        return group

    def to_device(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move a module built on the host (megatron's CPU initialisation) to the compute device."""
        return module.to(self.device)

    def from_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on the compute device; on GPU through pinned memory, asynchronously.

        The copy is ordered on the current stream, so kernels that read it
        later wait for it without a host sync.
        """
        if self.is_cuda:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def rng_state(self) -> dict[str, torch.Tensor]:
        """The host RNG state, plus the GPU's when computing on one."""
        state = {"torch": torch.get_rng_state()}
        if self.is_cuda:
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["torch"])
        if self.is_cuda and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def memory_gib(self) -> float:
        """Memory this process holds: peak CUDA allocation on GPU, resident set size on CPU."""
        if self.is_cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        import psutil

        return psutil.Process().memory_info().rss / 2**30


def local_gpu_count() -> int:
    """GPUs visible to this process (0 without CUDA): how many ranks a node launches."""
    return torch.cuda.device_count()


def detect() -> Platform:
    """CUDA + NCCL on the process's local GPU when CUDA is available, else CPU + gloo."""
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return Platform(torch.device("cuda", local_rank % torch.cuda.device_count()), "nccl")
    return Platform(_cpu_compute_device, "gloo")


def megatron_config_overrides() -> dict[str, Any]:
    """TransformerConfig settings that depend on the communication backend.

    CPU (gloo): gloo matches point-to-point messages between two ranks
    strictly in posting order, and megatron's batched p2p posts [send_prev,
    recv_prev, send_next, recv_next] on every rank: with two pipeline ranks
    (prev == next) an activation and a gradient then cross. The unbatched
    path orders sends and receives by rank parity, which gloo matches.
    (The fused ops that depend on the installed kernels: model/dispatch.fused_ops.)
    """
    return {"batch_p2p_comm": False} if detect().backend == "gloo" else {}
