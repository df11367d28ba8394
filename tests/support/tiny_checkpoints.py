"""The tiny model's tokenizer, checkpoints and HF folders for the convert / inference / eval tests.

Functions named *_on_ranks run on every rank of a `ranks.run(...)` pool.
Weights are random but deterministic, and every tensor is random, norms
included (all-ones norms would hide a swapped input/post-attention norm),
padded vocabulary rows too (so an export that kept them would show).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import torch

from chatbaker_megatron.config.checks import to_plain_dict
from chatbaker_megatron.config.model import ModelConfig
from chatbaker_megatron.config.optim import OptimConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from tests.support.tiny_model import SEQ, TINY_MODEL

# The shared tiny model: GQA (4 query heads, 2 key/value heads) so that head
# order matters, 4 layers so PP=2 with 2 virtual stages divides them.
TINY = dataclasses.replace(
    TINY_MODEL,
    ffn_hidden_size=96,
    # Room for the chat template's system prompt (about 200 tokens of this tokenizer).
    max_position_embeddings=512,
)
# Not a multiple of 128: the embedding is padded to 384 rows at TP=1, 512 at TP=2.
VOCAB = 300
LAYOUTS: dict[str, tuple[int, ParallelConfig]] = {
    "tp1": (1, ParallelConfig()),
    # An SFT run's checkpoint (its config names the chat template).
    "tp1_sft": (1, ParallelConfig()),
    "tp2": (2, ParallelConfig(tp=2)),
    "pp2": (2, ParallelConfig(pp=2)),
    "pp2_vpp2": (2, ParallelConfig(pp=2, vpp=2)),
}


def make_tokenizer(directory: Path) -> Path:
    """A byte-level BPE tokenizer of VOCAB ids trained on the bundled corpus (about a second)."""
    from chatbaker_megatron.data.demo.prepare import PRETRAIN_SAMPLES
    from chatbaker_megatron.data.tokenizer.train import train_tokenizer

    train_tokenizer(
        [str(p) for p in PRETRAIN_SAMPLES.values()],
        directory,
        vocab_size=VOCAB,
        heldout_fraction=0.0,
        show_progress=False,
    )
    return directory


def tokens() -> torch.Tensor:
    """Two fixed sequences of SEQ ids, [2, SEQ]."""
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(7))


def run_config(tokenizer_dir: Path, run_dir: Path, kind: str = "pretrain") -> dict[str, Any]:
    """What training stores as the checkpoint's run config, as far as conversion reads it."""
    return {
        "name": "tiny-test",
        "run_dir": str(run_dir),
        "model": to_plain_dict(TINY),
        "data": {
            "kind": kind,
            "root": str(tokenizer_dir.parent),
            "tokenizer": tokenizer_dir.name,
            "sft": {"template": "chatbaker"},
        },
        "train": {"seq_length": SEQ},
    }


def random_state(shapes: dict[str, torch.Size], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(shapes):
        noise = torch.randn(shapes[name], generator=gen)
        state[name] = 1.0 + 0.2 * noise if "norm" in name else 0.1 * noise
    return state


def layout_logits(chunks: list[torch.nn.Module], batch: torch.Tensor) -> torch.Tensor | None:
    """Logits [b, s, padded vocab] through megatron's schedules at this layout (last stage only)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    micro_batches = [batch[i : i + 1] for i in range(batch.shape[0])]
    positions = torch.arange(batch.shape[1])[None]

    def forward_step(data_iterator, model):
        output = model(next(data_iterator), positions, None)

        def collect(output_tensor: torch.Tensor, non_loss_data: bool = False) -> torch.Tensor:
            return gather_from_tensor_model_parallel_region(output_tensor).detach()

        return output, collect

    for chunk in chunks:
        chunk.eval()
    collected = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=[iter(micro_batches) for _ in chunks]
        if len(chunks) > 1
        else iter(micro_batches),
        model=chunks if len(chunks) > 1 else chunks[0],
        num_microbatches=len(micro_batches),
        seq_length=batch.shape[1],
        micro_batch_size=1,
        forward_only=True,
        collect_non_loss_data=True,
    )
    return torch.cat(list(collected), dim=0) if collected else None


def _engine(cfg: ParallelConfig, model: ModelConfig = TINY):
    from chatbaker_megatron import parallel
    from chatbaker_megatron.training.engine import build_engine

    parallel.initialize(cfg, seed=1234)
    return build_engine(
        model,
        cfg,
        OptimConfig(warmup_iters=0),  # a warmup must be shorter than the 1-iteration run
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        train_iters=1,
        global_batch_size=2,
    )


def save_random_checkpoint_on_ranks(
    cfg: ParallelConfig, root: str, config: dict[str, Any]
) -> dict[str, Any]:
    """Random weights at this layout: their logits, and a checkpoint saved as training saves."""
    from chatbaker_megatron.checkpoint.save import save_checkpoint
    from chatbaker_megatron.checkpoint.state import TrainState
    from chatbaker_megatron.model.sharding import full_state, load_full_state

    engine = _engine(cfg)
    shapes = {name: t.shape for name, t in full_state(engine.chunks).items()}
    load_full_state(engine.chunks, random_state(shapes))
    logits = layout_logits(engine.chunks, tokens())
    state = TrainState(iteration=7, consumed_samples=14)
    path = save_checkpoint(root, engine, state, config, keep_last=1)
    return {"logits": logits, "path": path}


def load_checkpoint_logits_on_ranks(cfg: ParallelConfig, checkpoint: str) -> torch.Tensor | None:
    """Load a checkpoint as `train.init_from` does (weights only) at this layout; its logits.

    The model is built from the config the checkpoint stores.
    """
    from chatbaker_megatron.checkpoint.layout import latest_checkpoint
    from chatbaker_megatron.checkpoint.load import load_checkpoint
    from chatbaker_megatron.checkpoint.run_config import model_config_from_dict
    from chatbaker_megatron.checkpoint.state import read_common

    path = latest_checkpoint(checkpoint) or checkpoint
    model = model_config_from_dict(read_common(path)["config"]["model"], path)
    engine = _engine(cfg, model)
    load_checkpoint(path, engine, weights_only=True)
    return layout_logits(engine.chunks, tokens())


def import_on_ranks(hf_dir: str, output: str, tp: int, pp: int) -> str:
    from chatbaker_megatron.convert.import_hf import import_hf

    return str(import_hf(hf_dir, output, tp=tp, pp=pp, progress=False))


def last_stage(results: list[Any]) -> torch.Tensor:
    """The one rank's result that is not None (the last pipeline stage's logits)."""
    found = [r for r in results if r is not None]
    assert found, "no rank returned logits"
    return found[0]


def hf_logits(hf_dir: Path, batch: torch.Tensor) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(batch).logits


def random_hf_model(
    directory: Path, tokenizer_dir: Path, seed: int = 3, model: ModelConfig = TINY
) -> Path:
    """A transformers-created random LlamaForCausalLM (GQA, random norms) with our tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatbaker_megatron.data.tokenizer.load import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=model.hidden_size,
        intermediate_size=model.ffn_hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.kv_heads,
        max_position_embeddings=model.max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=5000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
    model.save_pretrained(str(directory))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tokenizer_dir / name, directory / name)
    return directory
