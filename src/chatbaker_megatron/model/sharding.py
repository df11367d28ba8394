"""How the LLaMA weights are laid out across tensor and pipeline ranks.

`full_state` gathers this rank's model chunks into the unsharded (TP=1,
PP=1) tensors keyed by global parameter names; `load_full_state` does the
reverse. They give the Hugging Face converter and the parity tests one
canonical view of a model at any TP/PP/VPP layout.

Layout rules (megatron-core 0.19, our spec):
- A TP-sharded tensor is split along `param.partition_dim` into contiguous
  equal slices, except the SwiGLU `linear_fc1` weight, which each rank
  holds as [gate slice; up slice].
- The fused QKV weight is ordered by query group ([q heads of group, k, v] per
  group), and groups are contiguous per TP rank, so it splits like any
  column-parallel weight.
- Decoder layers are numbered globally by `layer.layer_number` (1-based);
  local module indices restart at 0 in every pipeline stage and chunk.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from megatron.core import parallel_state

if TYPE_CHECKING:
    from megatron.core.models.gpt import GPTModel

# The global names of the tensors outside the decoder layers.
EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT_LAYER = "output_layer.weight"

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
GLU_WEIGHT_SUFFIX = "mlp.linear_fc1.weight"


def unwrap(chunk: torch.nn.Module) -> GPTModel:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(chunk, "module") and not hasattr(chunk, "decoder"):
        inner = chunk.module
        assert isinstance(inner, torch.nn.Module)
        chunk = inner
    return chunk


def _partition_dim(param: torch.nn.Parameter) -> int:
    """The dim a TP-sharded parameter is split along."""
    # megatron's tensor-parallel layers set this attribute on their parameters.
    return param.partition_dim  # type: ignore[attr-defined]


def named_global_parameters(
    chunks: list[torch.nn.Module],
) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(global name, parameter) for every parameter of this rank's chunks."""
    for chunk in chunks:
        model = unwrap(chunk)
        for name, param in model.named_parameters():
            match = _LAYER.match(name)
            if match:
                layer = model.decoder.layers[int(match.group(1))]
                name = f"decoder.layers.{layer.layer_number - 1}." + name[match.end() :]
            yield name, param


def _tp_split(name: str, full: torch.Tensor, dim: int, tp: int) -> list[torch.Tensor]:
    if name.endswith(GLU_WEIGHT_SUFFIX):
        gate, up = full.chunk(2, dim=0)
        return [torch.cat(pair, dim=0) for pair in zip(gate.chunk(tp), up.chunk(tp))]
    return list(full.chunk(tp, dim=dim))


def _tp_merge(name: str, shards: list[torch.Tensor], dim: int) -> torch.Tensor:
    if name.endswith(GLU_WEIGHT_SUFFIX):
        gates, ups = zip(*(shard.chunk(2, dim=0) for shard in shards))
        return torch.cat([*gates, *ups], dim=0)
    return torch.cat(shards, dim=dim)


def _is_tp_sharded(param: torch.nn.Parameter) -> bool:
    return bool(getattr(param, "tensor_model_parallel", False))


def full_state(
    chunks: list[torch.nn.Module],
    tensor_of: Callable[[torch.nn.Parameter], torch.Tensor | None] = lambda p: p.detach(),
) -> dict[str, torch.Tensor]:
    """The unsharded tensors of the whole model, on every rank (CPU, fp32-preserving).

    `tensor_of` picks what to gather per parameter: the weights (default) or,
    e.g., `lambda p: p.main_grad` for gradients. Collective over the TP and
    PP groups; meant for small models (tests, conversion of one layer at a time).
    """
    tp_group = parallel_state.get_tensor_model_parallel_group()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    local: dict[str, torch.Tensor] = {}
    for name, param in named_global_parameters(chunks):
        tensor = tensor_of(param)
        if tensor is None:
            continue
        tensor = tensor.detach().contiguous()
        if _is_tp_sharded(param) and tp > 1:
            shards = [torch.empty_like(tensor) for _ in range(tp)]
            dist.all_gather(shards, tensor, group=tp_group)
            tensor = _tp_merge(name, shards, _partition_dim(param))
        # A copy, never a view: callers keep it across optimizer steps.
        local[name] = tensor.to("cpu", copy=True)
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if pp == 1:
        return local
    gathered: list[dict[str, torch.Tensor] | None] = [None] * pp
    dist.all_gather_object(
        gathered, local, group=parallel_state.get_pipeline_model_parallel_group()
    )
    merged: dict[str, torch.Tensor] = {}
    for stage in gathered:
        merged.update(stage or {})
    return merged


@torch.no_grad()
def load_full_state(chunks: list[torch.nn.Module], state: Mapping[str, torch.Tensor]) -> None:
    """Copy unsharded tensors into this rank's chunks, keeping only this rank's slices.

    Every parameter of the chunks must be in `state` with its full shape.
    """
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    for name, param in named_global_parameters(chunks):
        if name not in state:
            raise KeyError(f"parameter {name!r} is missing from the full state")
        full = state[name]
        if _is_tp_sharded(param) and tp > 1:
            full = _tp_split(name, full, _partition_dim(param), tp)[tp_rank]
        if full.shape != param.shape:
            raise ValueError(
                f"parameter {name!r}: full state gives shape {tuple(full.shape)} for this rank, "
                f"the model has {tuple(param.shape)}"
            )
        param.copy_(full)
