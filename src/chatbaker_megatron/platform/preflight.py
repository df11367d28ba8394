"""GPU pre-flight: before training, find the GPU or the node's links that run far below their peers.

At 256 GPUs one throttled GPU (thermals, a bad power cap, ECC retirements)
or one node with a degraded NVLink sets the pace of every step, and the
step-time figures only show that the whole job is slow. So, once per launch
and before the model is built, every rank times a bf16 GEMM (TFLOP/s of its
GPU) and every node an all-reduce over its own ranks (bus bandwidth, as
nccl-tests reports it: algorithm bandwidth * 2(n-1)/n); the figures are
gathered and rank 0 names every GPU whose GEMM rate, and every node whose
bus bandwidth, is below the median of its peers divided by the slow factor.
It warns; it does not stop the run (the operator decides whether to drain
the node). Links between nodes are not isolated here: one all-reduce over
all nodes cannot say which NIC is slow (nccl-tests pairwise runs can).

CUDA only: on CPU there is nothing to measure, and `run_preflight` says so.
The comparison (`slow_ranks`, `find_slow`) is plain Python.
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from chatbaker_megatron.platform.device import Platform

log = logging.getLogger(__name__)

GEMM_SIZE = 8192  # 1.1 TFLOP per product: long enough to reach a GPU's steady clock
GEMM_ITERS = 20
ALLREDUCE_BYTES = 256 * 2**20  # large enough to be bandwidth-bound on NVLink
ALLREDUCE_ITERS = 10
WARMUP_ITERS = 3


@dataclass(frozen=True)
class RankFigures:
    """What one rank measured."""

    rank: int
    host: str
    node: int
    local_rank: int
    gemm_tflops: float
    busbw_gbs: float | None  # None when the node has a single rank

    @property
    def name(self) -> str:
        return f"rank {self.rank} ({self.host}, GPU {self.local_rank})"


@dataclass(frozen=True)
class PreflightReport:
    figures: list[RankFigures]
    warnings: list[str]

    def summary(self) -> str:
        gemm = [f.gemm_tflops for f in self.figures]
        line = (
            f"pre-flight: bf16 GEMM {min(gemm):.0f}/{statistics.median(gemm):.0f}/{max(gemm):.0f} "
            f"TFLOP/s (min/median/max over {len(gemm)} GPUs)"
        )
        nodes = _node_bandwidths(self.figures)
        if nodes:
            bw = list(nodes.values())
            line += (
                f"; intra-node all-reduce bus bandwidth {min(bw):.0f}/{statistics.median(bw):.0f}/"
                f"{max(bw):.0f} GB/s (over {len(bw)} nodes)"
            )
        return line


def slow_ranks(values: Sequence[float], factor: float) -> list[int]:
    """Indices of the values below the median of all of them divided by `factor` (> 1)."""
    if len(values) < 2:
        return []
    threshold = statistics.median(values) / factor
    return [i for i, value in enumerate(values) if value < threshold]


def _node_bandwidths(figures: Sequence[RankFigures]) -> dict[int, float]:
    """Each node's bus bandwidth: the median of what its ranks timed for the same all-reduce."""
    by_node: dict[int, list[float]] = {}
    for f in figures:
        if f.busbw_gbs is not None:
            by_node.setdefault(f.node, []).append(f.busbw_gbs)
    return {node: statistics.median(values) for node, values in sorted(by_node.items())}


def find_slow(figures: Sequence[RankFigures], factor: float) -> list[str]:
    """One warning per GPU and per node far below its peers (below median / factor)."""
    warnings = []
    gemm = [f.gemm_tflops for f in figures]
    for i in slow_ranks(gemm, factor):
        f = figures[i]
        warnings.append(
            f"slow GPU: {f.name} runs a bf16 GEMM at {f.gemm_tflops:.0f} TFLOP/s, "
            f"median of {len(gemm)} GPUs {statistics.median(gemm):.0f} "
            f"(cluster.preflight_slow_factor={factor})"
        )
    nodes = _node_bandwidths(figures)
    hosts = {f.node: f.host for f in figures}
    node_ids, bandwidths = list(nodes), list(nodes.values())
    for i in slow_ranks(bandwidths, factor):
        node = node_ids[i]
        warnings.append(
            f"slow links: node {node} ({hosts[node]}) all-reduces at {bandwidths[i]:.0f} GB/s "
            f"bus bandwidth, median of {len(bandwidths)} nodes {statistics.median(bandwidths):.0f} "
            f"(cluster.preflight_slow_factor={factor})"
        )
    return warnings


def _timed(run: Callable[[], object], iters: int) -> float:
    """Seconds for `iters` calls of `run` after a warm-up, the GPU's queue drained around them."""
    for _ in range(WARMUP_ITERS):
        run()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        run()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_gemm_tflops(
    device: torch.device, size: int = GEMM_SIZE, iters: int = GEMM_ITERS
) -> float:
    """bf16 matmul rate of this GPU, in TFLOP/s."""
    a = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    b = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    out = torch.empty(size, size, dtype=torch.bfloat16, device=device)
    seconds = _timed(lambda: torch.matmul(a, b, out=out), iters)
    return 2 * size**3 * iters / seconds / 1e12


def measure_allreduce_busbw(
    group: dist.ProcessGroup, ranks: int, device: torch.device,
    nbytes: int = ALLREDUCE_BYTES, iters: int = ALLREDUCE_ITERS,
) -> float:  # fmt: skip
    """All-reduce bus bandwidth over `group` (`ranks` members), in GB/s (nccl-tests' busbw)."""
    buffer = torch.zeros(nbytes // 2, dtype=torch.bfloat16, device=device)
    dist.barrier(group=group, device_ids=[device.index])
    seconds = _timed(lambda: dist.all_reduce(buffer, group=group), iters)
    return nbytes * iters / seconds * 2 * (ranks - 1) / ranks / 1e9


def run_preflight(platform: Platform, *, slow_factor: float) -> PreflightReport | None:
    """Measure, gather and compare (collective: every rank calls it); None on CPU.

    Rank 0 logs the figures and a warning per slow GPU or node; every rank
    gets the report.
    """
    rank0 = dist.get_rank() == 0
    if not platform.is_cuda:
        if rank0:
            log.info(
                "pre-flight skipped: no CUDA device (it times GPU GEMMs and NVLink all-reduces)"
            )
        return None
    world = dist.get_world_size()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    node_group, _ = dist.new_subgroups(
        group_size=per_node
    )  # torchrun numbers a node's ranks contiguously
    gemm = measure_gemm_tflops(platform.device)
    busbw = measure_allreduce_busbw(node_group, per_node, platform.device) if per_node > 1 else None
    # Its NCCL communicator would otherwise hold GPU memory and a proxy thread for the
    # whole run (the other nodes' groups have none on this rank).
    dist.destroy_process_group(node_group)
    torch.cuda.empty_cache()  # give the test buffers back before the model is built
    mine = platform.tensor([gemm, -1.0 if busbw is None else busbw], dtype=torch.float64)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    hosts: list[str] = [""] * world
    dist.all_gather_object(hosts, socket.gethostname())
    figures = []
    rows = torch.stack(gathered).tolist()  # one host sync
    for rank, ((rate, bw), host) in enumerate(zip(rows, hosts, strict=True)):
        figures.append(
            RankFigures(rank, host, rank // per_node, rank % per_node, rate, None if bw < 0 else bw)
        )
    report = PreflightReport(figures, find_slow(figures, slow_factor))
    if rank0:
        log.info(report.summary())
        for warning in report.warnings:
            log.warning(warning)
    return report
