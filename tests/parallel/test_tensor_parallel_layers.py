"""megatron-core's tensor-parallel layers on 2 ranks equal the unsharded computation.

Each case builds one megatron-core layer with TP=2 (through the CPU compat
layer on CPU), loads this rank's slice of a full weight, runs forward and
backward on this rank's part of a fixed input, and returns the output and
gradients. The parent recomputes the same thing with plain torch on the full
weight in float64 and compares every rank's output, input gradient and
weight-gradient shard with the matching slice of the reference.

Layout conventions (megatron's): linear inputs are [seq, batch, hidden];
sequence parallel splits the seq dim (dim 0) over the TP ranks;
ColumnParallelLinear shards weight dim 0 (output features), RowParallelLinear
weight dim 1 (input features), VocabParallelEmbedding weight dim 0 (vocab),
and vocab-parallel logits are split along the last dim.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

TP = 2
SEQ, BATCH = 6, 3
IN, OUT = 24, 40  # OUT/TP = 20 output features per rank; IN/TP = 12 input features
VOCAB, HIDDEN = 50, 12  # 25 vocab rows per rank
SEED = 4321

# The layers run in fp32 and the reference in float64 on the same (fp32-exact)
# inputs; values are O(1-10) with reductions over at most 40 terms. Observed
# max differences are 3e-6 absolute, at most 1/4 of this bound, while any
# sharding or communication mistake (a missing all-reduce, a wrong slice)
# is O(0.1-1).
TOL = {"atol": 2e-6, "rtol": 1e-5}


def full_data(case: str) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights, inputs and upstream gradients of a case, in float64.

    Deterministic, so every rank and the parent build bit-identical tensors.
    """
    gen = torch.Generator().manual_seed(SEED + sum(map(ord, case)))

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        # Rounded to fp32-representable values: the layers and the reference then
        # see identical inputs, and only the layers' fp32 arithmetic differs.
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).float().double()

    if case.startswith(("column", "row")):
        return {
            "weight": randn(OUT, IN, scale=IN**-0.5),
            "bias": randn(OUT),
            "x": randn(SEQ, BATCH, IN),
            # Upstream gradient of the output: random, so every output element
            # weighs differently in the input/weight gradients.
            "grad_out": randn(SEQ, BATCH, OUT),
        }
    if case == "embedding":
        # Tokens span both vocab halves and repeat, so the masked lookup and the
        # accumulation of repeated rows' gradients are both exercised.
        tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
        tokens[0, :4] = torch.tensor([0, VOCAB // 2 - 1, VOCAB // 2, VOCAB - 1])
        tokens[1, :2] = tokens[0, 5]
        return {
            "weight": randn(VOCAB, HIDDEN),
            "tokens": tokens,
            "grad_out": randn(BATCH, SEQ, HIDDEN),
        }
    if case == "cross_entropy":
        target = torch.randint(0, VOCAB, (SEQ, BATCH), generator=gen)
        target[0, :2] = torch.tensor([0, VOCAB - 1])
        return {
            "logits": randn(SEQ, BATCH, VOCAB, scale=3.0),
            "target": target,
            # Per-token loss weights, like a loss mask with varying weights.
            "grad_out": torch.rand(SEQ, BATCH, generator=gen).double(),
        }
    raise ValueError(case)


def shard(tensor: torch.Tensor, dim: int, rank: int) -> torch.Tensor:
    """This rank's contiguous 1/TP of `tensor` along `dim`."""
    return tensor.chunk(TP, dim=dim)[rank]


def load_(param: torch.nn.Parameter, full: torch.Tensor, rank: int) -> None:
    """Copy this rank's slice of `full` into a megatron parameter, along its partition_dim."""
    if getattr(param, "tensor_model_parallel", False):
        full = shard(full, param.partition_dim, rank)
    assert param.shape == full.shape, (param.shape, full.shape)
    with torch.no_grad():
        param.copy_(full.to(param.dtype))


def _f32_leaf(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float().clone().requires_grad_(True)


def run_case(case: str) -> dict[str, Any]:
    """Rank body: forward + backward of one megatron layer under TP=2; returns what to compare."""
    from megatron.core import parallel_state
    from megatron.core.model_parallel_config import ModelParallelConfig
    from megatron.core.tensor_parallel import (
        ColumnParallelLinear,
        RowParallelLinear,
        VocabParallelEmbedding,
        vocab_parallel_cross_entropy,
    )

    from chatbaker_megatron import parallel, platform
    from chatbaker_megatron.config.parallel import ParallelConfig

    sp = case.endswith("_sp")
    parallel.initialize(ParallelConfig(tp=TP, sp=sp), seed=SEED)
    rank = parallel_state.get_tensor_model_parallel_rank()
    config = ModelParallelConfig(
        tensor_model_parallel_size=TP,
        sequence_parallel=sp,
        use_cpu_initialization=True,
        # The weights are loaded below; skip megatron's own init.
        perform_initialization=False,
        params_dtype=torch.float32,
    )
    plat = platform.detect()
    # On the compute device, as the model and its batches are in training.
    data = {key: plat.from_host(value) for key, value in full_data(case).items()}
    init = torch.nn.init.zeros_
    out: dict[str, Any] = {"rank": rank}

    if case.startswith("column"):
        layer = ColumnParallelLinear(
            IN, OUT, config=config, init_method=init, bias=True,
            gather_output=case == "column_gather",
        )  # fmt: skip
        # SP: this rank holds its slice of the sequence; otherwise the whole input.
        x = _f32_leaf(shard(data["x"], 0, rank) if sp else data["x"])
        # gather_output returns all OUT features, otherwise this rank's slice.
        grad_out = data["grad_out"] if case == "column_gather" else shard(data["grad_out"], 2, rank)
    elif case.startswith("row"):
        layer = RowParallelLinear(
            IN, OUT, config=config, init_method=init, bias=True,
            input_is_parallel=True, skip_bias_add=False,
        )  # fmt: skip
        x = _f32_leaf(shard(data["x"], 2, rank))
        # SP: the output is reduce-scattered along the sequence.
        grad_out = shard(data["grad_out"], 0, rank) if sp else data["grad_out"]
    elif case == "embedding":
        layer = VocabParallelEmbedding(VOCAB, HIDDEN, init_method=init, config=config)
        out["vocab_range"] = (layer.vocab_start_index, layer.vocab_end_index)
        x, grad_out = data["tokens"], data["grad_out"]
    elif case == "cross_entropy":
        logits = _f32_leaf(shard(data["logits"], 2, rank))
        # The kernel subtracts the max and exponentiates in place on its fp32
        # input: give it a copy so the leaf (and its grad) stay well-defined.
        loss = vocab_parallel_cross_entropy(logits.clone(), data["target"])
        loss.backward(data["grad_out"].float())
        out.update(output=loss.detach(), grad_input=logits.grad)
        return out
    else:
        raise ValueError(case)

    layer = plat.to_device(layer)
    load_(layer.weight, data["weight"], rank)
    if getattr(layer, "bias", None) is not None:
        load_(layer.bias, data["bias"], rank)
    out["weight_shape"] = tuple(layer.weight.shape)
    out["partition_dim"] = layer.weight.partition_dim

    y = layer(x)
    y = y[0] if isinstance(y, tuple) else y  # the linears return (output, bias)
    y.backward(grad_out.float())
    out.update(
        output=y.detach(),
        weight_grad=layer.weight.grad,
        grad_input=x.grad if x.is_floating_point() else None,
        bias_grad=None if getattr(layer, "bias", None) is None else layer.bias.grad,
    )
    return out


def reference(case: str) -> dict[str, torch.Tensor]:
    """The unsharded computation in plain torch, float64."""
    data = full_data(case)
    if case == "cross_entropy":
        logits = data["logits"].clone().requires_grad_(True)
        loss = F.cross_entropy(
            logits.reshape(-1, VOCAB), data["target"].reshape(-1), reduction="none"
        ).view(SEQ, BATCH)
        loss.backward(data["grad_out"])
        return {"output": loss.detach(), "grad_input": logits.grad}
    weight = data["weight"].clone().requires_grad_(True)
    if case == "embedding":
        y = F.embedding(data["tokens"], weight)
        y.backward(data["grad_out"])
        return {"output": y.detach(), "weight_grad": weight.grad}
    bias = data["bias"].clone().requires_grad_(True)
    x = data["x"].clone().requires_grad_(True)
    y = F.linear(x, weight, bias)
    y.backward(data["grad_out"])
    return {
        "output": y.detach(),
        "grad_input": x.grad,
        "weight_grad": weight.grad,
        "bias_grad": bias.grad,
    }


# What each rank's result must equal: the whole reference tensor (None), or this
# rank's TP slice of it along the given dim.
EXPECTED: dict[str, dict[str, int | None]] = {
    # Output features split; the input gradient is all-reduced, so whole.
    "column": {"output": 2, "grad_input": None, "weight_grad": 0, "bias_grad": 0},
    "column_gather": {"output": None, "grad_input": None, "weight_grad": 0, "bias_grad": 0},
    # Sequence parallel: input (and its gradient) split along the sequence.
    "column_sp": {"output": 2, "grad_input": 0, "weight_grad": 0, "bias_grad": 0},
    # Input features split; output all-reduced; bias replicated, its grad whole.
    "row": {"output": None, "grad_input": 2, "weight_grad": 1, "bias_grad": None},
    # Output reduce-scattered along the sequence. The bias grad is checked separately.
    "row_sp": {"output": 0, "grad_input": 2, "weight_grad": 1},
    "embedding": {"output": None, "weight_grad": 0},
    "cross_entropy": {"output": None, "grad_input": 2},
}
# megatron's own convention for which weight dim is sharded.
PARTITION_DIM = {"column": 0, "row": 1, "embedding": 0}


def expected_slice(ref: torch.Tensor, dim: int | None, rank: int) -> torch.Tensor:
    return ref if dim is None else shard(ref, dim, rank)


@pytest.mark.parametrize("case", list(EXPECTED))
def test_matches_unsharded_torch(ranks, case):
    results = ranks.run(TP, run_case, case)
    ref = reference(case)
    assert [r["rank"] for r in results] == list(range(TP))
    for rank, result in enumerate(results):
        layer_kind = case.split("_")[0]
        if layer_kind in PARTITION_DIM:
            dim = PARTITION_DIM[layer_kind]
            assert result["partition_dim"] == dim
            full_shape = list(ref["weight_grad"].shape)
            full_shape[dim] //= TP
            assert result["weight_shape"] == tuple(full_shape)
        if case == "embedding":
            per_rank = VOCAB // TP
            assert result["vocab_range"] == (rank * per_rank, (rank + 1) * per_rank)
        for key, dim in EXPECTED[case].items():
            actual = result[key]
            assert actual is not None, f"rank {rank} {key}: no gradient"
            assert actual.dtype == torch.float32, f"rank {rank} {key}: {actual.dtype}"
            torch.testing.assert_close(
                actual, expected_slice(ref[key], dim, rank).float(), **TOL,
                msg=lambda m, r=rank, k=key: f"{case} rank {r} {k}: {m}",
            )  # fmt: skip

    if case == "row_sp":
        # Each rank's bias only saw its own sequence slice; megatron sums these
        # over the TP group later (finalize_model_grads, `sequence_parallel` attr).
        total = sum(r["bias_grad"] for r in results)
        torch.testing.assert_close(total, ref["bias_grad"].float(), **TOL)
        assert not torch.allclose(results[0]["bias_grad"], ref["bias_grad"].float(), **TOL)
