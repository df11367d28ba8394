"""What is being trained (model, sequence, batch, precision) and how a layout splits it.

The planner imports neither torch nor megatron, so `chatbaker plan` answers in
well under a second; the few megatron rules it needs (vocabulary padding, the
interleaved schedule's order and warmup, which ranks are neighbours) are
restated here and checked against megatron's own code by the tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from chatbaker_megatron.config.model import ModelConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.model.sizes import layer_params

PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class Workload:
    model: ModelConfig
    vocab_size: int  # the tokenizer's; padded per layout (see `padded_vocab`)
    seq_length: int
    global_batch_size: int
    precision: str  # fp32 | bf16 | fp16: params, activations, pipeline messages
    train_tokens: float
    norm: str = "fused"  # activation profile of the norm kernel (see plan/activations.py)
    # The run's devices are GPUs: DDP then overlaps the grad reduce by default
    # (parallel.overlap_grad_reduce=null), which splits its buffers into buckets.
    cuda: bool = True

    @property
    def act_bytes(self) -> int:
        return PRECISION_BYTES[self.precision]

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_length

    def padded_vocab(self, tp: int) -> int:
        """model.llama.padded_vocab_size: a multiple of make_vocab_size_divisible_by * TP."""
        multiple = self.model.make_vocab_size_divisible_by * tp
        return -(-self.vocab_size // multiple) * multiple


def virtual_stages(par: ParallelConfig) -> int:
    return par.pp * (par.vpp or 1)


def layers_per_chunk(model: ModelConfig, par: ParallelConfig) -> int:
    return model.num_layers // virtual_stages(par)


def num_microbatches(work: Workload, par: ParallelConfig, dp: int) -> int:
    return work.global_batch_size // (par.micro_batch_size * dp)


def chunk_param_numels(work: Workload, par: ParallelConfig, rank: int, chunk: int) -> list[int]:
    """Sizes of the parameter tensors one TP rank holds for chunk `chunk` of pipeline rank `rank`.

    Virtual stage chunk * pp + rank (megatron's interleaved assignment); the
    first holds the embedding, the last the final norm and the output layer.
    Matrices are split over TP, the RMSNorm scales are replicated. In the
    order of the chunk's named_parameters().
    """
    model, t, h = work.model, par.tp, work.model.hidden_size
    layer = layer_params(model)
    # Module registration order (model/spec.py + megatron's SelfAttention, which
    # registers linear_proj before linear_qkv): DDP lays its buffer out in it.
    per_layer = [h, layer.proj // t, layer.qkv // t, h, layer.fc1 // t, layer.fc2 // t]
    numels = per_layer * layers_per_chunk(model, par)
    stage = chunk * par.pp + rank
    vocab_rows = work.padded_vocab(t) // t * h
    if stage == 0:
        numels.append(vocab_rows)
    if stage == virtual_stages(par) - 1:
        numels += [h, vocab_rows]
    return numels


def chunk_params(work: Workload, par: ParallelConfig, rank: int, chunk: int) -> int:
    return sum(chunk_param_numels(work, par, rank, chunk))


def rank_params(work: Workload, par: ParallelConfig, rank: int) -> int:
    return sum(chunk_params(work, par, rank, c) for c in range(par.vpp or 1))


def forward_order(microbatches: int, chunks: int, group: int) -> Iterator[tuple[int, int]]:
    """(microbatch, chunk) in the order a rank runs forwards (megatron's get_schedule_table)."""
    for first in range(0, microbatches, group):
        last = microbatches if first + group >= microbatches else first + group
        for chunk in range(chunks):
            for mb in range(first, last):
                yield mb, chunk


def warmup_forwards(par: ParallelConfig, microbatches: int, rank: int) -> int:
    """Forwards a pipeline rank runs before its first backward (megatron's get_pp_rank_microbatches)."""
    total = microbatches * (par.vpp or 1)
    if par.pp == 1:
        return 0
    if par.vpp is None:
        warmup = par.pp - rank - 1
    else:
        warmup = (par.pp - rank - 1) * 2 + (par.vpp - 1) * par.pp
    return min(warmup, total)


def inflight_per_chunk(par: ParallelConfig, microbatches: int, rank: int) -> list[int]:
    """Micro-batches whose activations a rank holds at its peak, per model chunk.

    The peak is just before the first backward: the warmup forwards plus the
    one 1F1B forward. Afterwards each forward is matched by a backward.
    """
    chunks = par.vpp or 1
    live = [0] * chunks
    order = forward_order(microbatches, chunks, par.pp)
    for _mb, chunk in itertools.islice(order, warmup_forwards(par, microbatches, rank) + 1):
        live[chunk] += 1
    return live


def distinct_ranks(pp: int) -> list[int]:
    """Pipeline ranks that can differ: the first (embedding), the last (output layer) and rank 1.

    Ranks 1..pp-2 hold the same parameters and do the same work, and rank 1
    holds the most in-flight micro-batches of them, so it stands for all.
    """
    return sorted({0, min(1, pp - 1), pp - 1})


def spans_nodes(group_stride: int, group_size: int, devices_per_node: int) -> bool:
    """Whether a process group of `group_size` ranks `group_stride` apart leaves one node.

    megatron's default rank order is tp-cp-ep-dp-pp: TP neighbours are adjacent
    ranks, DP neighbours TP apart, pipeline neighbours TP * DP apart.
    """
    return group_size > 1 and group_stride * group_size > devices_per_node
