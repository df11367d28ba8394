"""Fixes to megatron-core 0.19 that every device needs (CPU and GPU alike).

Without Transformer Engine or apex, megatron's optimizers run torch's
AdamW, and the DistributedOptimizer's `fully_reshardable` load has two bugs
with it:
- it looks up a per-parameter 'step' tensor that megatron never saves (the
  step is restored from the param groups first): the lookup is skipped;
- it gives every parameter the same step tensor, which torch's Adam then
  increments once per parameter, so the bias correction runs ahead after a
  resume: each parameter gets its own copy after the load.
The `dp_reshardable` load restores no per-parameter step at all (each stays
at 1, so Adam's bias correction restarts and a resume is not bit-exact):
every parameter's step is set from its param group's saved step, for both
formats.
A GPU machine without TE/apex (a plain PyTorch image) hits them exactly as
the CPU does, so these apply on every device, only when megatron's Adam is
torch's.

dist_checkpointing collects write results through a multiprocessing Manager,
a server process started on a rank's first save that never notices its rank
dying: every rank killed by kill -9 (and every in-job restart after one)
left it running for good (~570 MB each). It now dies with its rank, and on
Linux it is forked rather than spawned (see get_write_results_queue).

The DistributedOptimizer's `dp_reshardable` load copies the loaded state
into the main parameters with autograd on (its `fully_reshardable` and
`fully_sharded_model_space` counterparts run under `torch.no_grad()`): in
fp32, where the main parameters are views of the model's, torch refuses the
in-place copy into a view of a leaf that requires grad. It runs under
`torch.no_grad()` like the others.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
from multiprocessing.managers import SyncManager
from typing import Any

import torch

from chatbaker_megatron.platform.lifetime import die_with

_applied: list[str] = []

TORCH_ADAM_FIX = "torch-Adam step on reshardable load"
RESULTS_MANAGER_FIX = "checkpoint write-results Manager dies with its rank"
DP_RESHARDABLE_LOAD_FIX = "dp_reshardable load without autograd"
FIXES = (TORCH_ADAM_FIX, RESULTS_MANAGER_FIX, DP_RESHARDABLE_LOAD_FIX)


def uses_torch_adam() -> bool:
    """Whether megatron picked torch's Adam (no TE / apex fused Adam installed)."""
    optimizer = importlib.import_module("megatron.core.optimizer")
    return optimizer.Adam.__module__.startswith("torch.")


def _fix_torch_adam_step_on_load() -> None:
    dist_opt = importlib.import_module("megatron.core.optimizer.distrib_optimizer")
    optimizer_cls = dist_opt.DistributedOptimizer
    set_states = optimizer_cls._set_main_param_and_optimizer_states

    def set_states_keeping_step(self: Any, model_param: Any, tensors: dict) -> None:
        # A non-tensor entry is skipped by megatron's copy loop.
        set_states(self, model_param, {"step": None, **tensors})

    load_state_dict = optimizer_cls.load_state_dict

    def load_state_dict_unsharing_step(self: Any, state_dict: dict) -> None:
        load_state_dict(self, state_dict)
        # Each parameter gets its own step tensor holding its group's saved step:
        # the `dp_reshardable` load restores none (it leaves the initial 1), the
        # `fully_reshardable` one a tensor shared by every parameter.
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                param_state = self.optimizer.state.get(param, {})
                step = param_state.get("step")
                if isinstance(step, torch.Tensor):
                    param_state["step"] = (
                        torch.full_like(step, group["step"]) if "step" in group else step.clone()
                    )

    optimizer_cls._set_main_param_and_optimizer_states = set_states_keeping_step
    optimizer_cls.load_state_dict = load_state_dict_unsharing_step


def _fix_results_manager_outliving_its_rank() -> None:
    # Any: a module patched below; ModuleType types no attribute assignment.
    fs_async: Any = importlib.import_module(
        "megatron.core.dist_checkpointing.strategies.filesystem_async"
    )

    def get_write_results_queue(mp_mode: str = "spawn") -> Any:
        if fs_async._results_queue is None:
            # What megatron's `ctx.Manager().Queue()` does, plus the initializer.
            # Forked on Linux: a spawned server re-imports the rank's main module
            # and torch, seconds of CPU per rank per run, only to serve a queue.
            start = "fork" if sys.platform.startswith("linux") else mp_mode
            manager = SyncManager(ctx=multiprocessing.get_context(start))
            manager.start(initializer=die_with, initargs=(os.getpid(),))
            fs_async._results_queue = manager.Queue()
        return fs_async._results_queue

    fs_async.get_write_results_queue = get_write_results_queue


def _fix_dp_reshardable_load_under_autograd() -> None:
    dist_opt = importlib.import_module("megatron.core.optimizer.distrib_optimizer")
    optimizer_cls = dist_opt.DistributedOptimizer
    optimizer_cls.load_parameter_state_from_dp_reshardable = torch.no_grad()(
        optimizer_cls.load_parameter_state_from_dp_reshardable
    )


def applied_fixes() -> list[str]:
    return list(_applied)


def apply() -> list[str]:
    """Apply the fixes this process needs (idempotent); returns their names."""
    if not _applied:
        if uses_torch_adam():
            _fix_torch_adam_step_on_load()
            _applied.append(TORCH_ADAM_FIX)
        _fix_results_manager_outliving_its_rank()
        _applied.append(RESULTS_MANAGER_FIX)
        _fix_dp_reshardable_load_under_autograd()
        _applied.append(DP_RESHARDABLE_LOAD_FIX)
    return applied_fixes()
