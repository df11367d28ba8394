"""Memory per GPU of a layout: weights, gradients, optimizer state, activations, allowance.

Model state per parameter held by a GPU (megatron-core's mixed precision as
built by training/engine.py, cf. the distributed optimizer guide of
megatron-core): 16-bit weights (2 bytes), fp32 gradient buffer (4 bytes,
`grad_reduce_in_fp32`), fp32 main weights and Adam moments (12 bytes): 18
bytes per parameter, or 6 + 12/DP with the distributed optimizer. In fp32
the weights are the main weights: 4 + 4 + 8 (/DP). Exactly, per chunk, as
megatron lays out DDP's buffers (`buffer_layout`): with the distributed
optimizer every parameter starts at a multiple of 64 elements and every
bucket ends at a multiple of lcm(DP, 128), the 16-bit weights live in that
padded buffer too, and each DP rank's optimizer shard is its 1/DP slice of
every bucket, padding excluded. `chatbaker train ... --dry-run`
(training/dry_run.py) checks these numbers against the real built shards.

Activations: the micro-batches a pipeline rank holds at its peak
(workload.inflight_per_chunk) times what each saves (plan/activations.py).
The allowance adds the largest transient (the last stage's logits and their
fp32 gradient), a fixed workspace and allocator fragmentation
(plan/assumptions.py). Every pipeline rank is evaluated; the plan reports
the fullest.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.plan import activations as act
from chatbaker_megatron.plan.assumptions import Assumptions
from chatbaker_megatron.plan.workload import (
    Workload,
    chunk_param_numels,
    distinct_ranks,
    inflight_per_chunk,
    layers_per_chunk,
    num_microbatches,
    virtual_stages,
)

GIB = 2**30


@dataclass(frozen=True)
class Memory:
    """Bytes on the fullest GPU, by part."""

    pipeline_rank: int
    params: int  # parameters this GPU holds
    weights: int
    grads: int
    optimizer: int
    activations: int
    transient: int
    allowance: int  # workspace + fragmentation

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.grads
            + self.optimizer
            + self.activations
            + self.transient
            + self.allowance
        )

    def parts(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "grads": self.grads,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "transient": self.transient,
            "allowance": self.allowance,
            "total": self.total,
        }


def shape_of(work: Workload, par: ParallelConfig) -> act.Shape:
    return act.Shape(
        seq_length=work.seq_length,
        micro_batch_size=par.micro_batch_size,
        tp=par.tp,
        sp=par.sp,
        act_bytes=work.act_bytes,
        params_fp32=work.precision == "fp32",
        norm=work.norm,
    )


def activation_bytes(work: Workload, par: ParallelConfig, dp: int, rank: int) -> int:
    """Bytes saved for backward on pipeline rank `rank` at its peak."""
    shape = shape_of(work, par)
    per_chunk = layers_per_chunk(work.model, par) * act.layer_bytes(
        work.model, shape, par.recompute
    ) + act.total(act.chunk_terms(work.model, shape, par.recompute))
    inflight = inflight_per_chunk(par, num_microbatches(work, par, dp), rank)
    nbytes = sum(inflight) * per_chunk
    stages = virtual_stages(par)
    if rank == 0:  # virtual stage 0 is chunk 0 of rank 0
        nbytes += inflight[0] * act.total(act.embedding_terms(shape))
    if rank == par.pp - 1:  # the last virtual stage is the last chunk of the last rank
        head = act.head_terms(work.model, shape, work.padded_vocab(par.tp))
        nbytes += inflight[(stages - 1) // par.pp] * act.total(head)
    return nbytes


def transient_bytes(work: Workload, par: ParallelConfig, rank: int) -> int:
    """The last stage's output logits (16-bit) and their fp32 gradient, alive at once."""
    if rank != par.pp - 1:
        return 0
    tokens = work.seq_length * par.micro_batch_size
    return (work.act_bytes + 4) * tokens * work.padded_vocab(par.tp) // par.tp


@dataclass(frozen=True)
class BufferLayout:
    """One DDP param-and-grad buffer: [start, end) of each parameter and bucket, in elements."""

    params: tuple[tuple[int, int], ...]
    buckets: tuple[tuple[int, int], ...]

    @property
    def numel(self) -> int:
        return self.buckets[-1][1]


@functools.cache
def buffer_layout(
    numels: tuple[int, ...], dp: int, bucket_size: int | None, distributed_optimizer: bool
) -> BufferLayout:
    """megatron's layout of a chunk's parameters (sizes in named_parameters() order).

    Restates DistributedOptimizer._compute_per_buffer_param_layout (with the
    distributed optimizer) and _compute_default_per_buffer_param_layout
    (without: no padding): parameters in reverse order, a new bucket once one
    holds `bucket_size` elements (None: one bucket).
    """
    params, buckets = [], []
    start = bucket_start = 0
    for index, numel in enumerate(reversed(numels)):
        if distributed_optimizer:
            start = -(-start // 64) * 64
        end = start + numel
        params.append((start, end))
        full = bucket_size is not None and end - bucket_start >= bucket_size
        if full or index == len(numels) - 1:
            if distributed_optimizer:
                end = -(-end // math.lcm(dp, 128)) * math.lcm(dp, 128)
            buckets.append((bucket_start, end))
            bucket_start = end
        start = end
    return BufferLayout(tuple(params), tuple(buckets))


def ddp_bucket_size(
    work: Workload, par: ParallelConfig, dp: int, rank: int, chunk: int
) -> int | None:
    """Elements per DDP bucket (megatron's default), None for one bucket.

    Only with the grad reduce overlapped (CUDA by default), and only on the
    first chunk of pipeline rank 0 (training/engine.py's disable_bucketing
    and DDP's own rule for later pipeline ranks).
    """
    if not par.overlaps(on_gpu=work.cuda).grad_reduce or chunk > 0 or rank > 0:
        return None
    return max(40_000_000, 1_000_000 * dp)


@functools.cache
def optimizer_shard_numels(layout: BufferLayout, dp: int) -> tuple[int, ...]:
    """Parameter elements in each DP rank's distributed-optimizer shard (padding excluded).

    Each bucket is cut into DP equal slices; DP rank r owns slice r of every bucket.
    """
    owned = [0] * dp
    buckets = iter(layout.buckets)
    bucket_start, bucket_end = next(buckets)
    for start, end in layout.params:  # both in buffer order
        while start >= bucket_end:
            bucket_start, bucket_end = next(buckets)
        size = (bucket_end - bucket_start) // dp
        first, last = (start - bucket_start) // size, (end - 1 - bucket_start) // size
        for r in range(first, last + 1):
            lo = bucket_start + r * size
            owned[r] += min(end, lo + size) - max(start, lo)
    return tuple(owned)


@dataclass(frozen=True)
class ModelState:
    """Bytes of model state one GPU holds (weights, fp32 grads, optimizer)."""

    params: int
    weights: int
    grads: int
    optimizer: int


def model_state(
    work: Workload, par: ParallelConfig, dp: int, rank: int, dp_rank: int | None = None
) -> ModelState:
    """Model state of pipeline rank `rank`, DP rank `dp_rank` (None: the fullest DP rank)."""
    params = weights = grads = 0
    optimizer_elements = [0] * dp
    for chunk in range(par.vpp or 1):
        numels = tuple(chunk_param_numels(work, par, rank, chunk))
        layout = buffer_layout(
            numels, dp, ddp_bucket_size(work, par, dp, rank, chunk), par.distributed_optimizer
        )
        params += sum(numels)
        # With the distributed optimizer the weights are views into a padded buffer.
        weights += (layout.numel if par.distributed_optimizer else sum(numels)) * work.act_bytes
        grads += layout.numel * 4  # grad_reduce_in_fp32
        owned = (
            optimizer_shard_numels(layout, dp) if par.distributed_optimizer else [sum(numels)] * dp
        )
        optimizer_elements = [a + b for a, b in zip(optimizer_elements, owned, strict=True)]
    # Adam's two fp32 moments, plus fp32 main weights when the weights are 16-bit.
    per_element = 12 if work.precision != "fp32" else 8
    held = max(optimizer_elements) if dp_rank is None else optimizer_elements[dp_rank]
    return ModelState(params, weights, grads, held * per_element)


def rank_memory(
    work: Workload, par: ParallelConfig, dp: int, rank: int, assume: Assumptions
) -> Memory:
    state = model_state(work, par, dp, rank)
    params, weights, grads, optimizer = state.params, state.weights, state.grads, state.optimizer
    activations = activation_bytes(work, par, dp, rank)
    transient = transient_bytes(work, par, rank)
    tensors = weights + grads + optimizer + activations + transient
    allowance = int(assume.workspace_gib * GIB + assume.fragmentation * tensors)
    return Memory(rank, params, weights, grads, optimizer, activations, transient, allowance)


def peak_memory(work: Workload, par: ParallelConfig, dp: int, assume: Assumptions) -> Memory:
    """The fullest pipeline rank's memory."""
    return max(
        (rank_memory(work, par, dp, rank, assume) for rank in distinct_ranks(par.pp)),
        key=lambda m: m.total,
    )
