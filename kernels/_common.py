"""Helpers shared by the Triton kernel modules."""

from __future__ import annotations

import os

import torch
import triton.language as tl

# Accumulation dtype per input dtype: fp32 for the 16- and 32-bit floats, fp64
# for float64 inputs (which exist so that torch.autograd.gradcheck can check the
# backward kernels with finite differences).
_ACC_DTYPE = {
    torch.float16: tl.float32,
    torch.bfloat16: tl.float32,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


def triton_interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def acc_dtype(dtype: torch.dtype) -> tl.dtype:
    if dtype not in _ACC_DTYPE:
        raise TypeError(
            f"unsupported dtype {dtype}; expected one of {sorted(map(str, _ACC_DTYPE))}"
        )
    return _ACC_DTYPE[dtype]


def acc_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    """The torch dtype of `acc_dtype(dtype)`, for buffers the kernels accumulate into."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def parallel_programs(device: torch.device, per_sm: int) -> int:
    """How many persistent programs fill the device: `per_sm` per streaming multiprocessor.

    Under the interpreter programs run one after another, so a few suffice.
    """
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count * per_sm
