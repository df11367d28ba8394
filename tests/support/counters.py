"""Counters that check the planner against the real model on CPU.

Three measurements, each a context manager that leaves nothing behind:

- `SavedTensorCounter`: bytes autograd saves for backward (the activation
  memory), counted with `torch.autograd.graph.saved_tensors_hooks`. A saved
  tensor keeps its whole storage alive (a view of a larger buffer keeps the
  buffer), so bytes are counted per distinct storage, once; parameters are
  not activations and are left out.
- `CollectiveCounter`: every torch.distributed collective and point-to-point
  call, with its process group and tensor bytes. megatron binds some of these
  functions under other names at import time (e.g. `dist_all_gather_func`),
  so the wrapper replaces every module attribute that *is* one of the
  originals, in torch.distributed and in loaded megatron / chatbaker modules.
- `ScheduleRecorder`: the start and end time of every forward and backward
  step megatron's pipeline schedules run on this rank, with the model chunk
  and micro-batch, by wrapping `schedules.forward_step` / `backward_step`.
  `replay_idle_fraction` replays the recorded per-stage orders with unit
  costs, giving the schedule's bubble free of timing noise.
"""

from __future__ import annotations

import inspect
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


class SavedTensorCounter:
    """Distinct storages saved for backward while active, parameters excluded."""

    def __init__(self, parameters: Iterable[torch.Tensor]) -> None:
        self._excluded = {p.untyped_storage().data_ptr() for p in parameters}
        self.storages: dict[int, int] = {}  # data_ptr -> nbytes
        # The saved tensors themselves: holding them keeps every counted storage
        # alive, so no data_ptr is reused (and double counted) while counting.
        self._keep: list[torch.Tensor] = []

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._excluded and storage.nbytes() > 0 and key not in self.storages:
            self.storages[key] = storage.nbytes()
            self._keep.append(tensor)
        return tensor

    @property
    def total_bytes(self) -> int:
        return sum(self.storages.values())

    @contextmanager
    def active(self) -> Iterator[SavedTensorCounter]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield self


@dataclass
class CollectiveCall:
    op: str  # all_reduce, all_gather, reduce_scatter, broadcast, send, recv
    group: Any  # the ProcessGroup (None = the default group)
    nbytes: int  # the full tensor: all-gather output, reduce-scatter input


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _list_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(_tensor_bytes(t) for t in tensors)


# name -> (op, bytes of the call from its bound arguments). All-gather and
# reduce-scatter are counted by their full (unsharded) tensor, as the
# planner's formulas are.
_COUNTED = {
    "all_reduce": ("all_reduce", lambda a: _tensor_bytes(a["tensor"])),
    "all_gather_into_tensor": ("all_gather", lambda a: _tensor_bytes(a["output_tensor"])),
    "_all_gather_base": ("all_gather", lambda a: _tensor_bytes(a["output_tensor"])),
    "all_gather": ("all_gather", lambda a: _list_bytes(a["tensor_list"])),
    "reduce_scatter_tensor": ("reduce_scatter", lambda a: _tensor_bytes(a["input"])),
    "_reduce_scatter_base": ("reduce_scatter", lambda a: _tensor_bytes(a["input"])),
    "reduce_scatter": ("reduce_scatter", lambda a: _list_bytes(a["input_list"])),
    "broadcast": ("broadcast", lambda a: _tensor_bytes(a["tensor"])),
    "isend": ("send", lambda a: _tensor_bytes(a["tensor"])),
    "send": ("send", lambda a: _tensor_bytes(a["tensor"])),
    "irecv": ("recv", lambda a: _tensor_bytes(a["tensor"])),
    "recv": ("recv", lambda a: _tensor_bytes(a["tensor"])),
}


def _modules_to_patch() -> list[Any]:
    prefixes = ("megatron.", "chatbaker_megatron.")
    names = ["torch.distributed", "torch.distributed.distributed_c10d"]
    names += [name for name in list(sys.modules) if name.startswith(prefixes)]
    return [sys.modules[name] for name in names if name in sys.modules]


class CollectiveCounter:
    """Records collective calls while active (see module docstring)."""

    def __init__(self) -> None:
        self.calls: list[CollectiveCall] = []
        self._inside = threading.local()

    def _wrap(self, fn: Any, op: str, size: Any) -> Any:
        signature = inspect.signature(fn)

        def counted(*args: Any, **kwargs: Any) -> Any:
            # A collective called through this wrapper can come back to it once
            # more: c10d hands itself, by its (wrapped) global name, to any
            # active torch function mode. Count the outermost call only.
            if getattr(self._inside, "active", False):
                return fn(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            group = bound.arguments.get("group")
            self.calls.append(CollectiveCall(op, group, size(bound.arguments)))
            self._inside.active = True
            try:
                return fn(*args, **kwargs)
            finally:
                self._inside.active = False

        counted.__wrapped__ = fn  # type: ignore[attr-defined]
        return counted

    @contextmanager
    def active(self) -> Iterator[CollectiveCounter]:
        # id(original) -> (original, wrapper); the identity check guards against id reuse.
        wrappers = {
            id(fn): (fn, self._wrap(fn, *_COUNTED[name]))
            for name in _COUNTED
            if (fn := getattr(dist, name, None)) is not None
        }
        patched: list[tuple[Any, str, Any]] = []
        for module in _modules_to_patch():
            for attr, value in list(vars(module).items()):
                original, wrapper = wrappers.get(id(value), (None, None))
                if original is not None and value is original:
                    patched.append((module, attr, value))
                    setattr(module, attr, wrapper)
        try:
            yield self
        finally:
            for module, attr, value in patched:
                setattr(module, attr, value)

    def totals(self, group: Any) -> dict[str, int]:
        """Bytes per op over one process group (compared by identity)."""
        out: dict[str, int] = defaultdict(int)
        for call in self.calls:
            if call.group is group:
                out[call.op] += call.nbytes
        return dict(out)


@dataclass
class ScheduleEvent:
    kind: str  # "F" or "B"
    chunk: int  # model chunk (virtual stage) on this rank
    microbatch: int
    start: float  # time.perf_counter(): one clock for all processes of a machine
    end: float


@dataclass
class ScheduleRecorder:
    """Forward/backward steps of megatron's schedules on this rank while active."""

    events: list[ScheduleEvent] = field(default_factory=list)

    @contextmanager
    def active(self, chunks: list[torch.nn.Module]) -> Iterator[ScheduleRecorder]:
        from megatron.core.pipeline_parallel import schedules

        forward_step, backward_step = schedules.forward_step, schedules.backward_step
        forward_sig = inspect.signature(forward_step)
        # Backward steps carry no chunk or micro-batch: they are matched to their
        # forward by the identity of the output tensor the forward returned.
        pending: dict[int, tuple[int, int]] = {}

        def recorded_forward(*args: Any, **kwargs: Any) -> Any:
            bound = forward_sig.bind(*args, **kwargs).arguments
            chunk = next(i for i, c in enumerate(chunks) if c is bound["model"])
            microbatch = bound.get("current_microbatch") or 0
            start = time.perf_counter()
            result = forward_step(*args, **kwargs)
            self.events.append(ScheduleEvent("F", chunk, microbatch, start, time.perf_counter()))
            output = result[0][0] if isinstance(result[0], list) else result[0]
            pending[id(output)] = (chunk, microbatch)
            return result

        def recorded_backward(
            input_tensor: Any, output_tensor: Any, output_tensor_grad: Any, config: Any
        ) -> Any:
            output = output_tensor[0] if isinstance(output_tensor, list) else output_tensor
            chunk, microbatch = pending.pop(id(output))
            start = time.perf_counter()
            grad = backward_step(input_tensor, output_tensor, output_tensor_grad, config)
            self.events.append(ScheduleEvent("B", chunk, microbatch, start, time.perf_counter()))
            return grad

        schedules.forward_step, schedules.backward_step = recorded_forward, recorded_backward
        try:
            yield self
        finally:
            schedules.forward_step, schedules.backward_step = forward_step, backward_step


def observed_idle_fraction(per_rank: list[list[ScheduleEvent]]) -> list[float]:
    """Per rank: 1 - busy / span, span = first start to last end over all ranks."""
    start = min(e.start for events in per_rank for e in events)
    end = max(e.end for events in per_rank for e in events)
    return [1 - sum(e.end - e.start for e in events) / (end - start) for events in per_rank]


def replay_idle_fraction(
    orders: list[list[tuple[str, int, int]]], forward_cost: float = 1.0, backward_cost: float = 2.0
) -> list[float]:
    """Idle fraction per pipeline rank when the recorded orders run with fixed step costs.

    `orders[r]` is rank r's sequence of (kind, chunk, microbatch). Model chunk c
    of rank r is virtual stage c * p + r (megatron's interleaved assignment).
    A forward waits for the same micro-batch's forward on the previous virtual
    stage; a backward for its backward on the next one (the last virtual
    stage's backward for its own forward). Each rank runs its steps in the
    recorded order, so the result is the schedule's own bubble.
    """
    p = len(orders)
    stages = p * (1 + max(c for order in orders for _k, c, _m in order))
    finish: dict[tuple[str, int, int], float] = {}
    clock = [0.0] * p
    position = [0] * p
    while any(position[r] < len(orders[r]) for r in range(p)):
        progressed = False
        for r in range(p):
            if position[r] == len(orders[r]):
                continue
            kind, chunk, mb = orders[r][position[r]]
            stage = chunk * p + r
            if kind == "F":
                dep = ("F", stage - 1, mb) if stage > 0 else None
            else:
                dep = ("B", stage + 1, mb) if stage < stages - 1 else ("F", stage, mb)
            if dep is not None and dep not in finish:
                continue
            start = max(clock[r], finish[dep] if dep else 0.0)
            clock[r] = start + (forward_cost if kind == "F" else backward_cost)
            finish[(kind, stage, mb)] = clock[r]
            position[r] += 1
            progressed = True
        if not progressed:
            raise ValueError("recorded orders deadlock: a step waits on one that never runs")
    span = max(clock)
    busy = [sum(forward_cost if k == "F" else backward_cost for k, _c, _m in o) for o in orders]
    return [1 - b / span for b in busy]
