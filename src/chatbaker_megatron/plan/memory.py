"""Memory per GPU of a layout: weights, gradients, optimizer state, activations, allowance.

Model state per parameter held by a GPU (megatron-core's mixed precision as
built by training/engine.py, cf. the distributed optimizer guide of
megatron-core): 16-bit weights (2 bytes), fp32 gradient buffer (4 bytes,
`grad_reduce_in_fp32`), fp32 main weights and Adam moments (12 bytes): 18
bytes per parameter, or 6 + 12/DP with the distributed optimizer. In fp32
the weights are the main weights: 4 + 4 + 8 (/DP).

Activations: the micro-batches a pipeline rank holds at its peak
(workload.inflight_per_chunk) times what each saves (plan/activations.py).
The allowance adds the largest transient (the last stage's logits and their
fp32 gradient), a fixed workspace and allocator fragmentation
(plan/assumptions.py). Every pipeline rank is evaluated; the plan reports
the fullest.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.plan import activations as act
from chatbaker_megatron.plan.assumptions import Assumptions
from chatbaker_megatron.plan.workload import (
    Workload,
    distinct_ranks,
    inflight_per_chunk,
    layers_per_chunk,
    num_microbatches,
    rank_params,
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


def rank_memory(
    work: Workload, par: ParallelConfig, dp: int, rank: int, assume: Assumptions
) -> Memory:
    params = rank_params(work, par, rank)
    sixteen_bit = work.precision != "fp32"
    optimizer_per_param = 12 if sixteen_bit else 8
    optimizer = params * optimizer_per_param
    if par.distributed_optimizer:
        optimizer = -(-optimizer // dp)
    weights, grads = params * work.act_bytes, params * 4
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
