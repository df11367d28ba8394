"""Building megatron's sample index cache on every node, for clusters without a shared filesystem.

megatron's BlendedMegatronDatasetBuilder builds the index cache (document,
sample and shuffle indices, blend indices) on global rank 0 and has every
other rank read rank 0's files after a barrier, which needs a filesystem
that all nodes share. Here the first rank of every node first builds the
same cache in a node-local directory, in a child process where
torch.distributed is not initialised (so megatron builds rather than waits);
the build is a pure function of the config and seed, so every node computes
identical indices. Afterwards megatron's own builder finds the cache on
every rank.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from chatbaker_megatron import platform

# Longest a node may spend building its index cache while the others wait.
BUILD_TIMEOUT = datetime.timedelta(hours=12)


def node_cache_dir(base: str) -> str:
    """This node's own cache directory under `base` (distinct per node even on a shared filesystem)."""
    return os.path.join(base, socket.gethostname())


def every_rank() -> bool:
    """megatron's is_built_on_rank that gives every rank its datasets."""
    return True


def build_gpt_datasets(
    config: GPTDatasetConfig,
    sizes: list[int],
    is_built_on_rank: Callable[[], bool] = every_rank,
) -> list:
    """megatron's builder: [train, valid, test], building the cache where it is missing."""
    return BlendedMegatronDatasetBuilder(GPTDataset, sizes, is_built_on_rank, config).build()


def _build_in_child(config: GPTDatasetConfig, sizes: list[int]) -> str | None:
    """Run build_gpt_datasets in a fresh interpreter; the error text, or None on success."""
    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
        pickle.dump((config, sizes), f)
    # The child must import this package even when it is not installed.
    package_root = str(Path(__file__).resolve().parents[3])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "chatbaker_megatron.data.datasets.index_cache", f.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": path},
        )
    finally:
        os.remove(f.name)
    if done.returncode != 0:
        return f"exit code {done.returncode}:\n{done.stdout[-4000:]}"
    return None


def build_on_every_node(config: GPTDatasetConfig, sizes: list[int]) -> None:
    """Collective: the first rank of each node builds the cache into config.path_to_cache.

    Every rank learns whether any node failed, so a failure raises everywhere
    instead of leaving the other ranks waiting in a barrier. The wait runs on
    a gloo group with its own long timeout (BUILD_TIMEOUT): building the
    indices of a 1.4T-token blend takes longer than the NCCL timeout.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    group = platform.detect().host_group(BUILD_TIMEOUT)
    try:
        hosts: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(hosts, socket.gethostname(), group=group)
        rank = dist.get_rank()
        error = _build_in_child(config, sizes) if hosts.index(hosts[rank]) == rank else None
        errors: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error, group=group)
    finally:
        dist.destroy_process_group(group)
    for failed_rank, message in enumerate(errors):
        if message:
            raise RuntimeError(
                f"building the index cache in {config.path_to_cache} failed on rank "
                f"{failed_rank} ({hosts[failed_rank]}): {message}"
            )


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as pickled:
        build_gpt_datasets(*pickle.load(pickled))
