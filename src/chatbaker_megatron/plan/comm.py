"""Communication volume of one training step on one GPU, by process group and collective.

Bytes are those of the full tensor a call moves (an all-gather's output, a
reduce-scatter's input), exactly as tests/support/counters.py counts real
calls; the time model applies the ring cost to them (plan/steptime.py).

Tensor parallel (Korthikanti et al. 2022, section 4.2.2), x = one activation
tensor [s, b, h] in the training dtype, per layer and micro-batch:
- without SP: 2 all-reduces of x forward (after the attention and MLP output
  projections), 2 backward (input gradients of the QKV and fc1 projections);
- with SP: forward 2 all-gathers (before QKV, fc1) and 2 reduce-scatters
  (after the output projections); backward 2 all-gathers of the output
  gradients, and for QKV and fc1 an all-gather of the saved sequence-sharded
  input (megatron re-gathers it for the weight gradient rather than keep it)
  plus a reduce-scatter of the input gradient: 6 all-gathers + 4 reduce-scatters.
Outside the layers: the vocab-parallel embedding all-reduces x forward (SP:
reduce-scatter forward, all-gather backward); the output layer is column-parallel
(no SP: all-reduce of x backward; SP: all-gather forward, all-gather + reduce-
scatter backward); vocab-parallel cross entropy all-reduces three fp32 [s, b]
tensors (max logit, target logit, sum of exps). With SP the RMSNorm weight
gradients are all-reduced over TP once per step (fp32 main grads).

Data parallel, per step: megatron's DDP reduces its contiguous fp32 gradient
buffer (one per model chunk): all-reduce, or with the distributed optimizer a
reduce-scatter and, after the update, an all-gather of the 16-bit weights.
The distributed optimizer's buffer pads every parameter start to 64 elements
and the buffer end to lcm(DP, 128) (megatron.core.optimizer.param_layout),
with one bucket (overlap_grad_reduce off; with overlap megatron pads each
~40M-parameter bucket the same way, a <0.01% difference).

Pipeline, per step: each micro-batch crosses every virtual-stage boundary once
forward (activations) and once backward (gradients) as a [s, b, h] tensor
([s/t, b, h] with SP).

Scalars (the loss and token counts, the grad norm, pipeline flags: <= 16 bytes
per call) are bookkeeping and not modelled.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.plan.memory import buffer_layout
from chatbaker_megatron.plan.workload import (
    Workload,
    chunk_param_numels,
    layers_per_chunk,
    num_microbatches,
    virtual_stages,
)

GROUPS = ("tp", "dp", "pp")


@dataclass(frozen=True)
class Volume:
    """Bytes per step on one GPU: {(group, op): bytes}."""

    by_call: dict[tuple[str, str], int]

    def group(self, name: str) -> dict[str, int]:
        return {op: n for (g, op), n in self.by_call.items() if g == name and n}


def _add(out: dict, group: str, op: str, nbytes: int) -> None:
    out[(group, op)] += nbytes


def tp_microbatch(
    work: Workload, par: ParallelConfig, layers: int, first: bool, last: bool
) -> dict[str, int]:
    """TP bytes by op for one micro-batch through `layers` layers (+ embedding / head)."""
    if par.tp == 1:
        return {}
    tokens = work.seq_length * par.micro_batch_size
    x = work.act_bytes * tokens * work.model.hidden_size
    out: dict[str, int] = defaultdict(int)
    if par.sp:
        out["all_gather"] += 6 * layers * x + first * x + last * 2 * x
        out["reduce_scatter"] += 4 * layers * x + first * x + last * x
    else:
        out["all_reduce"] += 4 * layers * x + first * x + last * x
    out["all_reduce"] += last * 3 * 4 * tokens
    return dict(out)


def grad_buffer_numel(numels: list[int], dp: int, distributed_optimizer: bool) -> int:
    """Elements of one DDP gradient buffer (megatron's layout, one bucket)."""
    return buffer_layout(tuple(numels), dp, None, distributed_optimizer).numel


def step_volume(work: Workload, par: ParallelConfig, dp: int, rank: int) -> Volume:
    """Bytes pipeline rank `rank` moves per training step, by group and collective."""
    out: dict[tuple[str, str], int] = defaultdict(int)
    chunks, stages = par.vpp or 1, virtual_stages(par)
    m = num_microbatches(work, par, dp)
    layers = layers_per_chunk(work.model, par)
    h = work.model.hidden_size
    norm_params = 0
    for chunk in range(chunks):
        stage = chunk * par.pp + rank
        first, last = stage == 0, stage == stages - 1
        for op, nbytes in tp_microbatch(work, par, layers, first, last).items():
            _add(out, "tp", op, m * nbytes)
        norm_params += 2 * layers * h + last * h
        if dp > 1:
            numel = grad_buffer_numel(
                chunk_param_numels(work, par, rank, chunk), dp, par.distributed_optimizer
            )
            if par.distributed_optimizer:
                _add(out, "dp", "reduce_scatter", 4 * numel)
                _add(out, "dp", "all_gather", work.act_bytes * numel)
            else:
                _add(out, "dp", "all_reduce", 4 * numel)
    if par.tp > 1 and par.sp:
        _add(out, "tp", "all_reduce", 4 * norm_params)
    if par.pp > 1:
        tokens = work.seq_length * par.micro_batch_size // (par.tp if par.sp else 1)
        message = work.act_bytes * tokens * h
        forward_sends = chunks * m - (rank == par.pp - 1) * m
        backward_sends = chunks * m - (rank == 0) * m
        _add(out, "pp", "send", (forward_sends + backward_sends) * message)
        _add(out, "pp", "recv", (forward_sends + backward_sends) * message)
    return Volume(dict(out))
