"""GPU pre-flight: which GPU or node is far below its peers (plain Python), and the CUDA path."""

import logging

import pytest

from chatbaker_megatron import parallel, platform
from chatbaker_megatron.platform import preflight
from chatbaker_megatron.platform.preflight import (
    PreflightReport,
    RankFigures,
    find_slow,
    slow_ranks,
)

ON_GPU = platform.detect().is_cuda


def cluster(gemm: list[float], busbw: list[float | None], per_node: int = 8) -> list[RankFigures]:
    """Fake figures: rank r on node r // per_node; every rank of a node timed `busbw[node]`."""
    return [
        RankFigures(
            r, f"gpu-node-{r // per_node}", r // per_node, r % per_node, rate, busbw[r // per_node]
        )
        for r, rate in enumerate(gemm)
    ]


def test_slow_ranks_are_those_below_median_over_factor():
    assert slow_ranks([700, 690, 710, 500, 705], factor=1.25) == [3]  # 500 < 700 / 1.25 = 560
    assert slow_ranks([700, 690, 710, 570, 705], factor=1.25) == []  # 570: slower, not far below
    assert slow_ranks([700, 100], factor=1.25) == [1]
    assert slow_ranks([300], factor=1.25) == []  # no peers to compare with


def test_names_the_slow_gpu_and_the_slow_node():
    gemm = [710.0] * 24
    gemm[13] = 420.0  # a throttled GPU: node 1, local GPU 5
    warnings = find_slow(cluster(gemm, busbw=[360.0, 120.0, 350.0]), factor=1.25)
    assert warnings == [
        "slow GPU: rank 13 (gpu-node-1, GPU 5) runs a bf16 GEMM at 420 TFLOP/s, "
        "median of 24 GPUs 710 (cluster.preflight_slow_factor=1.25)",
        "slow links: node 1 (gpu-node-1) all-reduces at 120 GB/s bus bandwidth, "
        "median of 3 nodes 350 (cluster.preflight_slow_factor=1.25)",
    ]


def test_healthy_cluster_has_no_warnings_and_a_summary():
    figures = cluster([700.0, 702.0, 698.0, 701.0], busbw=[350.0, 352.0], per_node=2)
    report = PreflightReport(figures, find_slow(figures, factor=1.25))
    assert report.warnings == []
    assert report.summary() == (
        "pre-flight: bf16 GEMM 698/700/702 TFLOP/s (min/median/max over 4 GPUs); "
        "intra-node all-reduce bus bandwidth 350/351/352 GB/s (over 2 nodes)"
    )


def test_single_gpu_nodes_have_no_link_figure():
    figures = cluster([700.0, 300.0], busbw=[None, None], per_node=1)
    assert [w.split(":")[0] for w in find_slow(figures, factor=1.25)] == ["slow GPU"]
    assert "all-reduce" not in PreflightReport(figures, []).summary()


@pytest.mark.skipif(ON_GPU, reason="the CPU path: a GPU machine runs the measurement instead")
def test_cpu_skips_with_a_reason(caplog):
    parallel.ensure_process_group()
    with caplog.at_level(logging.INFO, logger=preflight.__name__):
        assert preflight.run_preflight(platform.detect(), slow_factor=1.25) is None
    assert "pre-flight skipped: no CUDA device" in caplog.text


@pytest.mark.skipif(not ON_GPU, reason="times a bf16 GEMM on a CUDA GPU; this machine has none")
def test_gpu_measures_a_plausible_gemm_rate(caplog):
    parallel.ensure_process_group()
    with caplog.at_level(logging.INFO, logger=preflight.__name__):
        report = preflight.run_preflight(platform.detect(), slow_factor=1.25)
    assert report is not None and len(report.figures) == 1
    # Any datacenter GPU of the last years does well over 10 TFLOP/s bf16; far
    # above 2,000 would mean the timing did not wait for the GPU.
    assert 10 < report.figures[0].gemm_tflops < 2_000, report.figures[0]
    assert report.figures[0].busbw_gbs is None  # one rank: no all-reduce to time
    assert "pre-flight: bf16 GEMM" in caplog.text
