"""Activation bytes saved for backward, tensor by tensor, for the ChatBaker LLaMA layer.

Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", section 4.1) count sbh(34 + 5as/h) bytes per GPT layer
in 16-bit: LayerNorm inputs, GeLU MLP, dropout masks and the s x s attention
scores. Our layer (model/spec.py on megatron-core) has none of dropout,
LayerNorm, GeLU or a materialised score matrix, so the count is derived again
from what each op of the layer saves, in megatron-core 0.19's code path:

  input RMSNorm      norm terms (see `norm_terms`)               seq-sharded with SP
  QKV linear         its input, the norm output: e*h            seq-sharded with SP
  RoPE (unfused)     cos and sin, for q and for k: 4 x s*d      per layer, not per token
  core attention     q, k after RoPE: e*h/t, e*g*d/t
  (flash-style SDPA) v is a view of the QKV projection output, so the whole
                     projection stays alive: e*(h + 2gd)/t
                     output: e*h/t (also the input of the output projection)
                     log-sum-exp: 4*a/t (fp32)
  pre-MLP RMSNorm    norm terms                                  seq-sharded with SP
  fc1 linear         its input, the norm output: e*h            seq-sharded with SP
  SwiGLU (unfused)   fc1 output (gate and up halves): 2e*f/t
                     silu(gate): e*f/t
                     up + glu_linear_offset (a new tensor): e*f/t
  fc2 linear         its input, silu(gate) * up: e*f/t

per token (s*b of them), in bytes, e = bytes per activation element, t = TP.
The residual adds and megatron's bias-dropout-add (dropout 0, no bias) save
nothing. With flash-style attention the 5as/h term of Korthikanti is gone;
only the fp32 log-sum-exp (a/t per token) remains.

Norm terms: a fused RMSNorm kernel saves its input (e*h) and the fp32
reciprocal RMS (4 bytes); the reference torch norm (dispatch.torch_rms_norm)
saves an fp32 copy of the input and the fp32 normalised values (8h) plus the
fp32 reciprocal RMS, and, with 16-bit weights, an fp32 copy of its weight.

Recompute (megatron's): `selective` checkpoints core attention, dropping the
log-sum-exp and adding the 4-byte mask-type tensor megatron passes to its
checkpoint; `full` checkpoints each layer, keeping only the layer input
(e*h, seq-sharded with SP) and, once per model chunk, the fp32 rotary
frequencies (s*d) passed to every checkpoint.

Outside the layers, per micro-batch: the first stage's embedding saves the
int64 token ids (and, with TP > 1, the vocabulary-range mask, 1 byte per
token); the last stage's final norm, the output layer's input (seq-sharded
with SP) and megatron's vocab-parallel cross entropy: fp32 softmax 4*V/t,
a bool target mask and int64 targets (9 bytes per token).

Every term is checked against `torch.autograd.graph.saved_tensors_hooks`
counts of the real model (tests/parallel/test_plan_validation_activations.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from chatbaker_megatron.config.model import ModelConfig

NORM_KINDS = ("torch", "fused")


@dataclass(frozen=True)
class Shape:
    """What one micro-batch looks like on one GPU."""

    seq_length: int
    micro_batch_size: int
    tp: int = 1
    sp: bool = False
    act_bytes: int = 2  # bytes per activation element (2 for bf16/fp16, 4 for fp32)
    # The reference torch norm copies a 16-bit weight to fp32 (and saves the copy).
    params_fp32: bool = False
    norm: str = "fused"  # "fused" (saves input + fp32 rstd) or "torch" (dispatch.torch_rms_norm)

    @property
    def tokens(self) -> int:
        return self.seq_length * self.micro_batch_size

    @property
    def seq_tokens(self) -> int:
        """Tokens held per GPU where sequence parallelism shards the sequence."""
        return self.tokens // self.tp if self.sp else self.tokens


@dataclass(frozen=True)
class Term:
    name: str
    nbytes: int


def norm_terms(prefix: str, model: ModelConfig, shape: Shape) -> list[Term]:
    h, n, e = model.hidden_size, shape.seq_tokens, shape.act_bytes
    if shape.norm == "fused":
        return [Term(f"{prefix}.input", e * h * n), Term(f"{prefix}.rstd_fp32", 4 * n)]
    if shape.norm != "torch":
        raise ValueError(f"norm={shape.norm!r}: expected one of {NORM_KINDS}")
    terms = [
        Term(f"{prefix}.input_fp32", 4 * h * n),
        Term(f"{prefix}.rstd_fp32", 4 * n),
        Term(f"{prefix}.normalized_fp32", 4 * h * n),
    ]
    if not shape.params_fp32:
        terms.append(Term(f"{prefix}.weight_fp32_copy", 4 * h))
    return terms


def layer_terms(model: ModelConfig, shape: Shape, recompute: str = "none") -> list[Term]:
    """Bytes one decoder layer saves for backward for one micro-batch on one GPU."""
    h, f, t, e = model.hidden_size, model.ffn_hidden_size, shape.tp, shape.act_bytes
    a, g, d = model.num_attention_heads, model.kv_heads, model.head_dim
    n, ns = shape.tokens, shape.seq_tokens
    if recompute == "full":
        return [Term("layer_input (checkpoint)", e * h * ns)]
    attention = [
        *norm_terms("input_norm", model, shape),
        Term("qkv.input", e * h * ns),
        Term("rope.cos_sin", 4 * shape.seq_length * d * e),
        Term("attn.q", e * h * n // t),
        Term("attn.k", e * g * d * n // t),
        Term("attn.qkv_output (held by v)", e * (h + 2 * g * d) * n // t),
        Term("attn.output (= proj.input)", e * h * n // t),
    ]
    if recompute == "none":
        attention.append(Term("attn.logsumexp_fp32", 4 * a * n // t))
    elif recompute == "selective":
        attention.append(Term("attn.checkpoint_mask_type", 4))
    else:
        raise ValueError(f"recompute={recompute!r}: expected none, selective or full")
    mlp = [
        *norm_terms("pre_mlp_norm", model, shape),
        Term("fc1.input", e * h * ns),
        Term("fc1.output (swiglu input)", 2 * e * f * n // t),
        Term("swiglu.silu_gate", e * f * n // t),
        Term("swiglu.up_plus_offset", e * f * n // t),
        Term("fc2.input", e * f * n // t),
    ]
    return attention + mlp


def chunk_terms(model: ModelConfig, shape: Shape, recompute: str) -> list[Term]:
    """Bytes saved once per model chunk and micro-batch, whatever its layer count."""
    if recompute == "full":
        return [Term("rotary_freqs_fp32 (checkpoint arg)", 4 * shape.seq_length * model.head_dim)]
    return []


def embedding_terms(shape: Shape) -> list[Term]:
    """Bytes the first pipeline stage saves outside its layers, per micro-batch."""
    terms = [Term("embedding.token_ids_int64", 8 * shape.tokens)]
    if shape.tp > 1:
        terms.append(Term("embedding.vocab_range_mask", shape.tokens))
    return terms


def head_terms(model: ModelConfig, shape: Shape, padded_vocab: int) -> list[Term]:
    """Bytes the last pipeline stage saves outside its layers, per micro-batch."""
    n = shape.tokens
    return [
        *norm_terms("final_norm", model, shape),
        Term("output.input", shape.act_bytes * model.hidden_size * shape.seq_tokens),
        Term("cross_entropy.softmax_fp32", 4 * padded_vocab * n // shape.tp),
        Term("cross_entropy.target_mask", n),
        Term("cross_entropy.targets_int64", 8 * n),
    ]


def total(terms: list[Term]) -> int:
    return sum(term.nbytes for term in terms)


def layer_bytes(model: ModelConfig, shape: Shape, recompute: str = "none") -> int:
    return total(layer_terms(model, shape, recompute))


def korthikanti_gpt_layer_bytes(model: ModelConfig, shape: Shape, recompute: str) -> float:
    """Korthikanti et al.'s GPT formula at this shape (16-bit), for comparison in reports.

    sbh(10 + 24/t + 5as/(ht)) with TP, sbh(34 + 5as/h)/t with TP + SP; selective
    drops the 5as/h term; full keeps 2sbh (2sbh/t with SP).
    """
    s, b, h, t = shape.seq_length, shape.micro_batch_size, model.hidden_size, shape.tp
    a = model.num_attention_heads
    sbh = s * b * h
    if recompute == "full":
        return 2 * sbh / (t if shape.sp else 1)
    scores = 0 if recompute == "selective" else 5 * a * s / h
    if shape.sp:
        return sbh * (34 + scores) / t
    return sbh * (10 + 24 / t + scores / t)
