"""Seconds per training step of a layout, by component.

For each pipeline rank, one micro-batch through all of its model chunks costs
- compute: hardware FLOPs (model/sizes.py, recompute included; the last
  stage adds the output layer's 6*V*h per token) / TP, at the assumed
  fraction of peak;
- TP communication: the tensor-parallel collectives of plan/comm.py at ring
  cost (all-reduce 2(t-1)/t * bytes / bandwidth, all-gather and
  reduce-scatter (t-1)/t * bytes / bandwidth) on NVLink when the TP group is
  inside a node; megatron runs them on the compute stream, so they are exposed;
- pipeline p2p: one activation forward and one gradient backward per chunk,
  blocking (megatron's default, no overlap_p2p_comm).
The slowest rank paces the pipeline: m micro-batches take m times its
micro-batch time, and interleaved 1F1B adds a bubble of (p-1)/v of it, i.e.
(p-1)/(v*m) of the ideal step (Narayanan et al. 2021, section 2.2.2).
After the last backward: the DP gradient reduction, of which the part longer
than one micro-batch's backward, and at least the last bucket, is exposed when
megatron overlaps it (overlap_grad_reduce, on with CUDA); the distributed optimizer's weight
all-gather, of which the part longer than the next step's first forward, and at
least the first bucket, is exposed when overlapped (overlap_param_gather, on with
the distributed optimizer and the grad reduce overlapped); and the memory-bound
optimizer update.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatbaker_megatron.config.cluster import ClusterConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.model import sizes
from chatbaker_megatron.plan.assumptions import Assumptions
from chatbaker_megatron.plan.comm import step_volume, tp_microbatch
from chatbaker_megatron.plan.workload import (
    Workload,
    distinct_ranks,
    layers_per_chunk,
    num_microbatches,
    rank_params,
    spans_nodes,
    virtual_stages,
)

RING_FACTOR = {"all_reduce": 2.0, "all_gather": 1.0, "reduce_scatter": 1.0}


@dataclass(frozen=True)
class StepTime:
    compute: float
    tp_comm: float
    pp_comm: float
    bubble: float
    dp_comm: float
    optimizer: float

    @property
    def total(self) -> float:
        return (
            self.compute + self.tp_comm + self.pp_comm + self.bubble + self.dp_comm + self.optimizer
        )

    def parts(self) -> dict[str, float]:
        return {
            "compute": self.compute,
            "tp_comm": self.tp_comm,
            "pp_comm": self.pp_comm,
            "bubble": self.bubble,
            "dp_comm": self.dp_comm,
            "optimizer": self.optimizer,
            "total": self.total,
        }


def _bandwidth(cluster: ClusterConfig, inter_node: bool, assume: Assumptions) -> float:
    gbs = cluster.inter_node_bandwidth_gbs if inter_node else cluster.intra_node_bandwidth_gbs
    return gbs * 1e9 * assume.comm_efficiency


def collective_seconds(volume: dict[str, int], size: int, bandwidth: float) -> float:
    """Ring cost of these collectives over a group of `size` ranks."""
    if size == 1:
        return 0.0
    share = (size - 1) / size
    return sum(RING_FACTOR[op] * share * n / bandwidth for op, n in volume.items())


def _flops_per_rank_microbatch(work: Workload, par: ParallelConfig, rank: int) -> float:
    model, s = work.model, work.seq_length
    layer = 3 * sizes.layer_forward_flops_per_token(model, s)
    recompute = sizes.recompute_flops_per_token(model, s, par.recompute) / model.num_layers
    per_token = (par.vpp or 1) * layers_per_chunk(model, par) * (layer + recompute)
    if rank == par.pp - 1:
        per_token += 6 * work.padded_vocab(par.tp) * model.hidden_size
    return per_token * s * par.micro_batch_size / par.tp


@dataclass(frozen=True)
class _RankTime:
    compute: float  # per micro-batch
    tp: float  # per micro-batch
    p2p: float  # per micro-batch
    dp: float  # per step, exposed
    optimizer: float  # per step

    @property
    def microbatch(self) -> float:
        return self.compute + self.tp + self.p2p


def _rank_time(
    work: Workload,
    par: ParallelConfig,
    dp: int,
    rank: int,
    cluster: ClusterConfig,
    assume: Assumptions,
) -> _RankTime:
    per_node = cluster.devices_per_node
    rate = cluster.device.peak_tflops * 1e12 * assume.compute_efficiency
    compute = _flops_per_rank_microbatch(work, par, rank) / rate

    tp_bw = _bandwidth(cluster, spans_nodes(1, par.tp, per_node), assume)
    stages, layers = virtual_stages(par), layers_per_chunk(work.model, par)
    tp = 0.0
    for chunk in range(par.vpp or 1):
        stage = chunk * par.pp + rank
        volume = tp_microbatch(work, par, layers, stage == 0, stage == stages - 1)
        tp += collective_seconds(volume, par.tp, tp_bw)

    p2p = 0.0
    if par.pp > 1:
        pp_bw = _bandwidth(cluster, spans_nodes(par.tp * dp, par.pp, per_node), assume)
        tokens = work.seq_length * par.micro_batch_size // (par.tp if par.sp else 1)
        message = work.act_bytes * tokens * work.model.hidden_size
        p2p = 2 * (par.vpp or 1) * message / pp_bw

    dp_bw = _bandwidth(cluster, spans_nodes(par.tp, dp, per_node), assume)
    volume = step_volume(work, par, dp, rank).group("dp")
    grad_ops = {op: n for op, n in volume.items() if op != "all_gather"}
    grad_reduce = collective_seconds(grad_ops, dp, dp_bw)
    local = rank_params(work, par, rank)
    overlaps = par.overlaps(on_gpu=work.cuda)
    # megatron's bucket size: max(40M, 1M * DP) parameters.
    bucket = min(1.0, max(40e6, 1e6 * dp) / local)
    if overlaps.grad_reduce:
        # Bucket reductions overlap the backward of the last micro-batch (2/3 of
        # its compute without recompute); the last bucket can only start when it ends.
        grad_reduce = max(grad_reduce - compute * 2 / 3, grad_reduce * bucket)
    param_gather = collective_seconds({"all_gather": volume.get("all_gather", 0)}, dp, dp_bw)
    if overlaps.param_gather:
        # Bucket all-gathers overlap the first micro-batch's forward (1/3 of its
        # compute); the first bucket is needed before the first layer runs.
        param_gather = max(param_gather - compute / 3, param_gather * bucket)

    if par.distributed_optimizer:
        local = -(-local // dp)
    hbm = cluster.device.memory_bandwidth_gbs * 1e9
    optimizer = local * assume.optimizer_bytes_per_param / hbm
    return _RankTime(compute, tp, p2p, grad_reduce + param_gather, optimizer)


def step_time(
    work: Workload, par: ParallelConfig, dp: int, cluster: ClusterConfig, assume: Assumptions
) -> StepTime:
    ranks = [_rank_time(work, par, dp, r, cluster, assume) for r in distinct_ranks(par.pp)]
    slowest = max(ranks, key=lambda r: r.microbatch)
    m = num_microbatches(work, par, dp)
    bubble = bubble_fraction(par.pp, par.vpp, m) * m * slowest.microbatch
    return StepTime(
        compute=m * slowest.compute,
        tp_comm=m * slowest.tp,
        pp_comm=m * slowest.p2p,
        bubble=bubble,
        dp_comm=max(r.dp for r in ranks),
        optimizer=max(r.optimizer for r in ranks),
    )


def bubble_fraction(pp: int, vpp: int | None, microbatches: int) -> float:
    """Interleaved 1F1B bubble over the ideal step: (p-1)/(v*m) (Narayanan et al. 2021)."""
    return (pp - 1) / ((vpp or 1) * microbatches)
