"""chatbaker_kernels: fused RMSNorm and causal flash attention for training LLaMA models.

Usable on its own (it never imports megatron). Each op is a
`torch.autograd.Function` with a fused forward and backward, plus a plain
functional wrapper.

triton_rmsnorm.py    Triton RMSNorm, optionally fused with the residual add
cuda_rmsnorm.py      the same op on the optional CUDA extension
csrc/                its CUDA source, built at install where CUDA is found (setup.py)
triton_attention.py  Triton causal flash attention, dense or varlen, GQA
_common.py           helpers the Triton modules share
compile_check.py     every Triton kernel compiled for GPU architectures, without a GPU

This file imports nothing on purpose: Triton reads TRITON_INTERPRET (run the
kernels on CPU) once, when it is first imported, so importing the package must
not import Triton behind the caller's back.
"""
