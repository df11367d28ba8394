"""The planner's stated assumptions: figures that are not hardware constants.

Hardware constants (peak TFLOP/s, HBM, NVLink and InfiniBand bandwidth) live
in the cluster config (conf/cluster/*.yaml) with their sources. What follows
are judgements about software efficiency; each is printed with the plan and
can be changed on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Assumptions:
    # Fraction of the dense peak the model's math (GEMMs, flash attention) runs
    # at when nothing else is exposed. cuBLAS bf16 GEMMs of transformer sizes
    # reach 75-85% of the A100's 312 TFLOP/s and flash attention 2 about 70%
    # (Dao 2023); norms, RoPE and SwiGLU elementwise kernels pull the mix down.
    # 0.70 reproduces llm-foundry's published 1B-7B MFU on 8 x A100 (docs/performance.md).
    compute_efficiency: float = 0.70
    # Fraction of the link bandwidth NCCL's ring collectives and p2p achieve
    # (bus bandwidth over line rate, typical of nccl-tests on NVSwitch / HDR IB).
    comm_efficiency: float = 0.80
    # Memory held outside the model's tensors: the CUDA context (~0.5 GiB),
    # NCCL communicator buffers for the TP/DP/PP groups and cuBLAS workspaces.
    workspace_gib: float = 2.0
    # PyTorch caching-allocator fragmentation, as a share of the tensor bytes.
    fragmentation: float = 0.10
    # The optimizer step is memory-bound: bytes of HBM traffic per parameter
    # it updates (read fp32 grad, main param, Adam m and v; write main param,
    # m, v and the 16-bit model param; plus the grad-norm read): 4*4 + 3*4 + 2 + 4.
    optimizer_bytes_per_param: int = 34

    def describe(self) -> list[str]:
        return [
            f"compute runs at {self.compute_efficiency:.0%} of peak (GEMMs + flash attention)",
            f"collectives and p2p reach {self.comm_efficiency:.0%} of link bandwidth (ring algorithms)",
            f"{self.workspace_gib:g} GiB per GPU for CUDA context, NCCL and cuBLAS workspaces",
            f"+{self.fragmentation:.0%} of tensor bytes for allocator fragmentation",
            f"optimizer step memory-bound at {self.optimizer_bytes_per_param} bytes of HBM traffic per local parameter",
        ]
