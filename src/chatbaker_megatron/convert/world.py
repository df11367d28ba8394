"""A torch.distributed world of one for single-process tools (export, generate, chat).

megatron's dist_checkpointing and parallel_state need a default process
group even in one process. A file store in a fresh temporary directory is
used instead of env:// so that a tool never binds a TCP port, and two tools
(or a tool next to a training job) on one machine never collide.
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

import torch.distributed as dist

from chatbaker_megatron import parallel, platform
from chatbaker_megatron.config.parallel import ParallelConfig


def ensure_process_group() -> None:
    """Start a world of one on the platform's backend unless a process group already exists."""
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
    from megatron.core import parallel_state

    ensure_process_group()
    if not parallel_state.model_parallel_is_initialized():
        parallel.initialize(ParallelConfig(), seed=seed)
