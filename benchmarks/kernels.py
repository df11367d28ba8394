"""Kernel benchmark: forward+backward time and throughput of every backend against PyTorch.

    python benchmarks/kernels.py [--tokens 16384] [--iters 20] [--ops attention norm] [--json PATH]

For the 1.3B (hidden 2048, 32 heads x 64) and 7B (hidden 4096, 32 heads x 128)
shapes at sequence lengths 2048 and 4096, with `--tokens` tokens per step
(batch = tokens / seq), bf16, it times every backend the dispatcher finds here
(plus Transformer Engine's modules when installed) and prints one table:
forward ms, forward+backward ms, achieved throughput, % of the GPU's peak and
the speed-up over the PyTorch reference (`torch` row). `--json PATH` also
writes the device, its peaks and the rows (scripts/gpu_check.py reads it).

Throughput formulas (the usual FlashAttention-2 / bandwidth conventions):
- causal attention, forward FLOPs = 4 * b * h * s^2 * d / 2 (QK^T and PV,
  2 FLOPs per multiply-add, half the scores masked); backward = 2.5 x forward
  (five matmuls to the forward's two); forward+backward = 3.5 x forward.
  Packed (varlen) rows sum that over the documents.
- RMSNorm bytes moved = forward: read x, write y; backward: read x and dy,
  write dx (the weight and per-row statistics are negligible) = 5 tensor
  passes, 10 bytes per bf16 element. add+norm adds a read of the residual and
  a write of the sum forward, and a read of d(sum) backward: 8 passes.

Targets (docs/kernels.md): RMSNorm close to the HBM bandwidth (>= ~80 %);
attention forward+backward >= 60 % of the GPU's dense bf16 peak
(FlashAttention-2 reports 50-73 % on A100).

Needs a CUDA GPU; without one it says so and exits 0.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from chatbaker_megatron.model import dispatch
from tests.support.add_norm import add_rms_norm_of


@dataclass(frozen=True)
class Shape:
    hidden: int
    heads: int
    head_dim: int


MODELS = {"1.3B": Shape(2048, 32, 64), "7B": Shape(4096, 32, 128)}

# Dense bf16 tensor-core FLOP/s and HBM bytes/s from the vendor data sheets (SXM parts).
PEAKS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12)}


@dataclass
class Timing:
    fwd_ms: float
    fwd_bwd_ms: float


def device_peak(device_name: str) -> tuple[float, float] | None:
    """(bf16 FLOP/s, HBM bytes/s) of a device named like torch.cuda.get_device_name()."""
    return next((peak for name, peak in PEAKS.items() if name in device_name), None)


def _time(
    run: Callable[[], torch.Tensor | tuple], inputs: list[torch.Tensor], iters: int
) -> Timing:
    """Mean time of the forward alone and of forward + backward (CUDA events)."""

    def outputs() -> list[torch.Tensor]:
        out = run()
        return list(out) if isinstance(out, tuple) else [out]

    grads = [torch.randn_like(o) for o in outputs()]

    def fwd_bwd() -> None:
        torch.autograd.grad(outputs(), inputs, grads)

    for _ in range(3):
        fwd_bwd()
    timings = []
    for step in (outputs, fwd_bwd):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            step()
        end.record()
        torch.cuda.synchronize()
        timings.append(start.elapsed_time(end) / iters)
    return Timing(*timings)


def _attention_backends(shape: Shape) -> dict[str, Callable]:
    backends = {
        name: dispatch.attention_fn(name)
        for name, backend in dispatch.ATTENTION_BACKENDS.items()
        if backend.load is not None and backend.available()
    }
    if dispatch.ATTENTION_BACKENDS["te"].available():
        import transformer_engine.pytorch as te

        module = te.DotProductAttention(
            shape.heads, shape.head_dim, qkv_format="bshd", attn_mask_type="causal"
        )
        backends["te"] = lambda q, k, v, *, softmax_scale: module(q, k, v)
    return backends


def _norm_backends(hidden: int) -> dict[str, tuple[Callable, Callable]]:
    norms = {
        name: dispatch.norm_fn(name)
        for name, backend in dispatch.NORM_BACKENDS.items()
        if backend.load is not None and backend.available()
    }
    if dispatch.NORM_BACKENDS["te"].available():
        import transformer_engine.pytorch as te

        module = te.RMSNorm(hidden, eps=1e-6, params_dtype=torch.bfloat16, device="cuda")

        def te_norm(x, weight, eps):
            return module(x)

        norms["te"] = te_norm
    return {name: (norm, add_rms_norm_of(name, norm)) for name, norm in norms.items()}


def _packed_offsets(tokens: int, seq: int, generator: torch.Generator) -> list[int]:
    """Documents of uneven lengths (uniform in [16, seq]) packed into `tokens`."""
    offsets = [0]
    while offsets[-1] < tokens:
        length = int(torch.randint(16, seq + 1, (1,), generator=generator))
        offsets.append(min(offsets[-1] + length, tokens))
    return offsets


def _row(
    op: str,
    model: str,
    seq: int,
    backend: str,
    timing: Timing,
    rate: str,
    percent: str,
    baseline: Timing,
) -> list[str]:
    return [
        op, model, str(seq), backend, f"{timing.fwd_ms:.3f}", f"{timing.fwd_bwd_ms:.3f}",
        rate, percent, f"{baseline.fwd_bwd_ms / timing.fwd_bwd_ms:.2f}x",
    ]  # fmt: skip


def _torch_first(backends: dict) -> list:
    """Backends with the PyTorch reference first: it is the baseline of the ratio."""
    return sorted(backends.items(), key=lambda item: item[0] != "torch")


def _attention_case(
    model: str, shape: Shape, seq: int, args: argparse.Namespace, peak
) -> list[list[str]]:
    b = max(args.tokens // seq, 1)
    scale = shape.head_dim**-0.5
    q, k, v = (
        torch.randn(
            b, seq, shape.heads, shape.head_dim, device="cuda", dtype=torch.bfloat16
        ).requires_grad_()
        for _ in range(3)
    )
    offsets = _packed_offsets(b * seq, seq, torch.Generator().manual_seed(0))
    lengths = [end - start for start, end in itertools.pairwise(offsets)]
    cu_seqlens = torch.tensor(offsets, dtype=torch.int32, device="cuda")

    def dense(fn: Callable) -> torch.Tensor:
        return fn(q, k, v, softmax_scale=scale)

    def packed(fn: Callable) -> torch.Tensor:
        q_t, k_t, v_t = (t.view(-1, shape.heads, shape.head_dim) for t in (q, k, v))
        return fn(
            q_t, k_t, v_t, softmax_scale=scale, cu_seqlens=cu_seqlens, max_seqlen=max(lengths)
        )

    def causal_flops(length: int) -> float:
        return 2.0 * shape.heads * length * length * shape.head_dim

    rows = []
    cases = [
        ("dense", dense, b * causal_flops(seq)),
        ("packed", packed, sum(map(causal_flops, lengths))),
    ]
    for layout, call, fwd_flops in cases:
        baseline = None
        for name, fn in _torch_first(_attention_backends(shape)):
            if layout == "packed" and name == "te":
                continue  # TE's packed (thd) form is a differently built module
            timing = _time(functools.partial(call, fn), [q, k, v], args.iters)
            baseline = baseline or timing
            tflops = 3.5 * fwd_flops / (timing.fwd_bwd_ms * 1e-3) / 1e12
            percent = f"{100 * tflops * 1e12 / peak[0]:.0f}%" if peak else "-"
            rows.append(
                _row(
                    f"attention {layout}",
                    model,
                    seq,
                    name,
                    timing,
                    f"{tflops:.1f} TFLOP/s",
                    percent,
                    baseline,
                )
            )
    return rows


def _norm_case(
    model: str, shape: Shape, seq: int, args: argparse.Namespace, peak
) -> list[list[str]]:
    tokens = max(args.tokens // seq, 1) * seq
    x, residual = (
        torch.randn(tokens, shape.hidden, device="cuda", dtype=torch.bfloat16).requires_grad_()
        for _ in range(2)
    )
    weight = torch.ones(shape.hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    tensor_bytes = x.numel() * x.element_size()

    rows = []
    for op, passes in (("rms_norm", 5), ("add+rms_norm", 8)):
        baseline = None
        for name, (norm, add_norm) in _torch_first(_norm_backends(shape.hidden)):
            if op == "rms_norm":
                timing = _time(functools.partial(norm, x, weight, 1e-6), [x, weight], args.iters)
            else:
                run = functools.partial(add_norm, x, residual, weight, 1e-6)
                timing = _time(run, [x, residual, weight], args.iters)
            baseline = baseline or timing
            gbps = passes * tensor_bytes / (timing.fwd_bwd_ms * 1e-3) / 1e9
            percent = f"{100 * gbps * 1e9 / peak[1]:.0f}%" if peak else "-"
            rows.append(_row(op, model, seq, name, timing, f"{gbps:.0f} GB/s", percent, baseline))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokens", type=int, default=16384, help="tokens per step (batch = tokens / seq)"
    )
    parser.add_argument("--seqs", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument(
        "--ops", nargs="+", default=["attention", "norm"], choices=["attention", "norm"]
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA GPU and found none; nothing to measure.")
        return 0

    device_name = torch.cuda.get_device_name()
    peak = device_peak(device_name)
    print(
        f"{device_name}: peak bf16 {peak[0] / 1e12:.0f} TFLOP/s, HBM {peak[1] / 1e12:.2f} TB/s"
        if peak
        else device_name
    )
    cases = {"attention": _attention_case, "norm": _norm_case}
    rows = [
        row
        for op in args.ops
        for model, shape in MODELS.items()
        for seq in args.seqs
        for row in cases[op](model, shape, seq, args, peak)
    ]
    header = [
        "op",
        "model",
        "seq",
        "backend",
        "fwd ms",
        "fwd+bwd ms",
        "throughput",
        "% peak",
        "vs torch",
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    if args.json:
        record = {
            "device": device_name,
            "peak_tflops": peak[0] / 1e12 if peak else None,
            "peak_hbm_gbs": peak[1] / 1e9 if peak else None,
            "rows": [dict(zip(header, row, strict=True)) for row in rows],
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
