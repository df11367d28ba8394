"""Compile every Triton kernel for GPU architectures on a machine without a GPU.

    python -m chatbaker_kernels.compile_check [--arch 80 90] [--quick]

Triton can lower a kernel all the way to a cubin for a named target with no
device present. This catches what the CPU interpreter cannot: type errors in
the GPU lowering, tile configurations whose shared memory does not fit the
architecture's per-block limit, and 16-bit kernels that spill registers
(read from the cubin with the cuobjdump that ships with Triton). It exits
non-zero on any failure. TRITON_INTERPRET must be unset: under the interpreter
`@triton.jit` produces interpreter functions, which cannot be compiled.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

# Largest dynamic shared memory per block (bytes): A100 163 KiB, H100 227 KiB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}

_TRITON_TYPE = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.float64: "fp64",
}


@dataclass
class Job:
    """One kernel specialisation: pointer dtypes, scalar args and constexprs."""

    name: str
    kernel: Any  # a triton.JITFunction (Triton ships no type information)
    pointers: dict[str, torch.dtype | None]  # None: an absent optional pointer
    scalars: dict[str, str]  # name -> Triton scalar type ("i32", "fp32")
    constexprs: dict[str, object]
    num_warps: int
    num_stages: int = 1
    # Spilling registers costs local-memory traffic in the hot loop: a
    # performance bug for the 16-bit kernels training runs on. fp32 attention
    # (tests, debugging) may spill.
    no_spills: bool = True


def _rmsnorm_jobs(quick: bool) -> Iterator[Job]:
    import triton.language as tl

    from chatbaker_kernels import triton_rmsnorm as rn

    dtypes = [torch.bfloat16] if quick else [torch.bfloat16, torch.float16, torch.float32]
    for dtype in dtypes:
        for weight_dtype in dict.fromkeys((dtype, torch.float32)):
            for hidden in (2048, 4096) if not quick else (4096,):
                for residual in (False, True):
                    block, warps = rn._block_and_warps(hidden, rn.MAX_BLOCK)
                    opt = dtype if residual else None
                    yield Job(
                        f"rmsnorm_fwd {dtype} w={weight_dtype} h={hidden} residual={residual}",
                        rn._rms_norm_fwd_kernel,
                        {
                            "X": dtype,
                            "RES": opt,
                            "W": weight_dtype,
                            "Y": dtype,
                            "SUM": opt,
                            "RSTD": torch.float32,
                        },
                        {"n_cols": "i32", "eps": "fp32"},
                        {
                            "HAS_RESIDUAL": residual,
                            "BLOCK": block,
                            "ONE_BLOCK": True,
                            "ACC": tl.float32,
                        },
                        warps,
                    )
                    yield Job(
                        f"rmsnorm_bwd {dtype} w={weight_dtype} h={hidden} residual={residual}",
                        rn._rms_norm_bwd_kernel,
                        {
                            "DY": dtype,
                            "X": dtype,
                            "W": weight_dtype,
                            "RSTD": torch.float32,
                            "ROW_DOT": None,
                            "DSUM": opt,
                            "DX": dtype,
                            "DW_PARTIAL": torch.float32,
                        },
                        {"n_rows": "i32", "n_cols": "i32", "rows_per_program": "i32"},
                        {
                            "HAS_DSUM": residual,
                            "BLOCK": block,
                            "ONE_BLOCK": True,
                            "ACC": tl.float32,
                        },
                        warps,
                    )
    # Rows wider than MAX_BLOCK take the chunked path.
    block, warps = rn._block_and_warps(4 * rn.MAX_BLOCK, rn.MAX_BLOCK)
    dtype = torch.bfloat16
    yield Job(
        "rmsnorm_fwd chunked",
        rn._rms_norm_fwd_kernel,
        {"X": dtype, "RES": dtype, "W": dtype, "Y": dtype, "SUM": dtype, "RSTD": torch.float32},
        {"n_cols": "i32", "eps": "fp32"},
        {"HAS_RESIDUAL": True, "BLOCK": block, "ONE_BLOCK": False, "ACC": tl.float32},
        warps,
    )
    yield Job(
        "rmsnorm_bwd_row_dot chunked",
        rn._rms_norm_bwd_row_dot_kernel,
        {"DY": dtype, "X": dtype, "W": dtype, "RSTD": torch.float32, "ROW_DOT": torch.float32},
        {"n_cols": "i32"},
        {"BLOCK": block, "ACC": tl.float32},
        warps,
    )
    yield Job(
        "rmsnorm_bwd chunked",
        rn._rms_norm_bwd_kernel,
        {
            "DY": dtype,
            "X": dtype,
            "W": dtype,
            "RSTD": torch.float32,
            "ROW_DOT": torch.float32,
            "DSUM": None,
            "DX": dtype,
            "DW_PARTIAL": torch.float32,
        },
        {"n_rows": "i32", "n_cols": "i32", "rows_per_program": "i32"},
        {"HAS_DSUM": False, "BLOCK": block, "ONE_BLOCK": False, "ACC": tl.float32},
        warps,
    )


def _attention_jobs(quick: bool) -> Iterator[Job]:
    import triton.language as tl

    from chatbaker_kernels import triton_attention as fa

    f32 = torch.float32
    bwd_scalars = {
        "softmax_scale": "fp32",
        "qk_scale": "fp32",
        "seqlen": "i32",
        "total_tokens": "i32",
    }
    dtypes = [torch.bfloat16] if quick else [torch.bfloat16, torch.float16, torch.float32]
    for dtype in dtypes:
        for head_dim in (64,) if quick else (64, 128):
            cfg = fa.default_config(head_dim, dtype, torch.device("cuda"))
            for varlen in (False, True) if dtype == torch.bfloat16 else (False,):
                common = {
                    "H_Q": 32, "H_KV": 8, "HEAD_DIM": head_dim, "VARLEN": varlen,
                    "BLOCK_D": head_dim, "ACC": tl.float32, "WIDEN": False,
                }  # fmt: skip
                cu = torch.int32 if varlen else None
                tag = f"{dtype} d={head_dim} varlen={varlen}"
                yield Job(
                    f"attn_fwd {tag}",
                    fa._attn_fwd_kernel,
                    {
                        "Q": dtype,
                        "K": dtype,
                        "V": dtype,
                        "OUT": dtype,
                        "LSE": f32,
                        "CU_SEQLENS": cu,
                    },
                    {"qk_scale": "fp32", "seqlen": "i32", "total_tokens": "i32"},
                    {**common, "BLOCK_M": cfg.fwd.outer, "BLOCK_N": cfg.fwd.inner},
                    cfg.fwd.num_warps,
                    cfg.fwd.num_stages,
                    no_spills=dtype != f32,
                )
                yield Job(
                    f"attn_bwd_dkdv {tag}",
                    fa._attn_bwd_dkdv_kernel,
                    {
                        "Q": dtype,
                        "K": dtype,
                        "V": dtype,
                        "DO": dtype,
                        "LSE": f32,
                        "DELTA": f32,
                        "DK": dtype,
                        "DV": dtype,
                        "CU_SEQLENS": cu,
                    },
                    bwd_scalars,
                    {**common, "BLOCK_M": cfg.dkdv.inner, "BLOCK_N": cfg.dkdv.outer},
                    cfg.dkdv.num_warps,
                    cfg.dkdv.num_stages,
                    no_spills=dtype != f32,
                )
                yield Job(
                    f"attn_bwd_dq {tag}",
                    fa._attn_bwd_dq_kernel,
                    {
                        "Q": dtype,
                        "K": dtype,
                        "V": dtype,
                        "DO": dtype,
                        "LSE": f32,
                        "DELTA": f32,
                        "DQ": dtype,
                        "CU_SEQLENS": cu,
                    },
                    bwd_scalars,
                    {**common, "BLOCK_M": cfg.dq.outer, "BLOCK_N": cfg.dq.inner},
                    cfg.dq.num_warps,
                    cfg.dq.num_stages,
                    no_spills=dtype != f32,
                )
            yield Job(
                f"attn_bwd_delta {dtype} d={head_dim}",
                fa._attn_bwd_delta_kernel,
                {"OUT": dtype, "DO": dtype, "DELTA": f32},
                {"total_tokens": "i32"},
                {
                    "H_Q": 32,
                    "HEAD_DIM": head_dim,
                    "BLOCK_T": 64,
                    "BLOCK_D": head_dim,
                    "ACC": tl.float32,
                },
                num_warps=4,
            )


@dataclass
class Resources:
    shared: int  # bytes of shared memory per block
    registers: int  # per thread
    spilled: int  # bytes of per-thread stack: registers spilled to local memory


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) from the cuobjdump that ships with Triton."""
    import triton

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        tool = triton.knobs.nvidia.cuobjdump.path
        report = subprocess.run(
            [tool, "--dump-resource-usage", path], capture_output=True, text=True, check=True
        )
    usage = dict(re.findall(r"(REG|STACK):(\d+)", report.stdout))
    return int(usage["REG"]), int(usage["STACK"])


def _compile(job: Job, arch: int) -> Resources:
    """Compile for sm_<arch> and read the kernel's resource usage."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature: dict[str, str] = {}
    constexprs: dict[str, object] = dict(job.constexprs)
    attrs = {}
    for index, name in enumerate(job.kernel.arg_names):
        if name in job.constexprs:
            signature[name] = "constexpr"
        elif name in job.pointers:
            dtype = job.pointers[name]
            if dtype is None:
                signature[name] = "constexpr"
                constexprs[name] = None
            else:
                signature[name] = "*" + _TRITON_TYPE.get(dtype, "i32")
                # As the launcher specialises real tensors: 16-byte aligned.
                attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = job.scalars[name]
    source = ASTSource(fn=job.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": job.num_warps, "num_stages": job.num_stages},
    )
    registers, spilled = _resource_usage(compiled.asm["cubin"])
    return Resources(compiled.metadata.shared, registers, spilled)


def _verdict(job: Job, arch: int, used: Resources) -> str | None:
    """Why this compiled kernel is unacceptable, or None."""
    if used.shared > SHARED_LIMIT[arch]:
        return f"needs {used.shared} bytes of shared memory, sm_{arch} has {SHARED_LIMIT[arch]}"
    if used.spilled and job.no_spills:
        return f"spills {used.spilled} bytes of registers per thread (pick smaller tiles or more warps)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_LIMIT)
    )
    parser.add_argument("--quick", action="store_true", help="bf16 and one shape per kernel only")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_check: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)")
        return 2

    failures = 0
    jobs = [*_rmsnorm_jobs(args.quick), *_attention_jobs(args.quick)]
    for arch in args.arch:
        for job in jobs:
            started = time.perf_counter()
            try:
                used = _compile(job, arch)
            except Exception as exc:  # a lowering error is a result to report, not to raise
                failures += 1
                print(f"FAIL sm_{arch} {job.name}: {type(exc).__name__}: {exc}")
                continue
            problem = _verdict(job, arch, used)
            failures += problem is not None
            seconds = time.perf_counter() - started
            print(
                f"{'FAIL' if problem else 'ok  '} sm_{arch} {job.name}: shared {used.shared / 1024:.1f} KiB, "
                f"{used.registers} regs, {used.spilled} B spilled ({seconds:.1f}s)"
                + (f" -- {problem}" if problem else "")
            )
    print(f"compile_check: {len(jobs) * len(args.arch) - failures} ok, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
