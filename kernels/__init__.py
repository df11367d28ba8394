"""chatbaker_kernels: fused RMSNorm and causal flash attention for training LLaMA models.

Usable on its own (it never imports megatron). Each op is a
`torch.autograd.Function` with a fused forward and backward, plus a plain
functional wrapper:

- `chatbaker_kernels.triton_rmsnorm`   Triton RMSNorm, optionally fused with the residual add
- `chatbaker_kernels.cuda_rmsnorm`     the same op on the optional CUDA extension (`csrc/`)
- `chatbaker_kernels.triton_attention` Triton causal flash attention, dense or varlen, GQA

This file imports nothing on purpose: Triton reads TRITON_INTERPRET (run the
kernels on CPU) once, when it is first imported, so importing the package must
not import Triton behind the caller's back.
"""
