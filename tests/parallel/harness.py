"""Run a test body on N ranks: gloo on CPU, NCCL when N GPUs are present.

Worker processes start once per world size and are reused across tests;
they are forked from the suite's forkserver, which has torch and megatron
imported (tests/support/forkserver.py). Each task is a module-level
function (pickled by reference) called on every rank with the same
arguments; its return values come back as a list indexed by rank. After
every task the workers drop megatron's process groups, so the next test
initialises its own topology on the same torch.distributed world.

A failing or hanging rank takes the pool down (the other ranks may be
stuck in a collective); the next task starts a fresh pool.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any

from tests.support import forkserver

COLLECTIVE_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reset_megatron_state() -> None:
    from megatron.core import num_microbatches_calculator
    from megatron.core.tensor_parallel import random as tp_random

    from chatbaker_megatron import parallel

    parallel.destroy_model_parallel()
    # The finished task's engine holds its groups in reference cycles; a group's
    # polling thread ends only when the group is freed.
    gc.collect()
    num_microbatches_calculator.destroy_num_microbatches_calculator()
    tp_random.get_cuda_rng_tracker().reset()


def _worker(rank: int, world_size: int, port: int, tasks: mp.Queue, results: mp.Queue) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS="1",
    )
    import datetime

    import torch
    import torch.distributed as dist

    from chatbaker_megatron import platform

    torch.set_num_threads(1)
    plat = platform.prepare_megatron()
    plat.init_process_group(timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    while True:
        task = tasks.get()
        if task is None:
            break
        fn, args, kwargs = task
        try:
            results.put((rank, True, fn(*args, **kwargs)))
        except BaseException:  # report everything, incl. assertion errors, to the parent
            results.put((rank, False, traceback.format_exc()))
        finally:
            _reset_megatron_state()
    dist.destroy_process_group()


class RankPool:
    """`world_size` persistent worker processes in one torch.distributed world."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        ctx = forkserver.context()
        port = _free_port()
        self._results: mp.Queue = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in range(world_size)]
        self._procs = [
            ctx.Process(
                target=_worker,
                args=(rank, world_size, port, self._tasks[rank], self._results),
                # Not daemonic: megatron's checkpointing starts helper processes,
                # which daemonic processes may not do. close() ends them.
                daemon=False,
            )
            for rank in range(world_size)
        ]
        for proc in self._procs:
            proc.start()

    @property
    def alive(self) -> bool:
        return all(proc.is_alive() for proc in self._procs)

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float = 600, **kwargs: Any) -> list:
        for task_queue in self._tasks:
            task_queue.put((fn, args, kwargs))
        outputs: dict[int, Any] = {}
        failures: dict[int, str] = {}
        try:
            while len(outputs) + len(failures) < self.world_size:
                # Once a rank failed, give the others a short grace period to report.
                wait = 10 if failures else timeout
                rank, ok, value = self._results.get(timeout=wait)
                (outputs if ok else failures)[rank] = value
        except queue.Empty:
            missing = sorted(set(range(self.world_size)) - set(outputs) - set(failures))
            failures.update({rank: "no result (hung or crashed)" for rank in missing})
        if failures:
            self.close()
            report = "\n".join(f"--- rank {rank}:\n{tb}" for rank, tb in sorted(failures.items()))
            raise AssertionError(f"{fn.__name__} failed on {len(failures)} rank(s):\n{report}")
        return [outputs[rank] for rank in range(self.world_size)]

    def close(self) -> None:
        for proc, task_queue in zip(self._procs, self._tasks):
            if proc.is_alive():
                task_queue.put(None)
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


class Pools:
    """One live RankPool per world size, restarted after a failure."""

    def __init__(self) -> None:
        self._pools: dict[int, RankPool] = {}

    def run(self, world_size: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list:
        # Big pools hold ~1 GB per rank: keep at most one of them alive.
        for size in [s for s in self._pools if s > 2 and s != world_size]:
            self.close(size)
        pool = self._pools.get(world_size)
        if pool is None or not pool.alive:
            pool = self._pools[world_size] = RankPool(world_size)
        return pool.run(fn, *args, **kwargs)

    def close(self, world_size: int | None = None) -> None:
        for size in [world_size] if world_size is not None else list(self._pools):
            pool = self._pools.pop(size, None)
            if pool is not None:
                pool.close()
