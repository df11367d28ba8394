"""A DPO / IPO / RPO step's loss and rewards equal TRL's on the HF exports of the same weights.

Ours: the policy and the reference are checkpoints of different random weights
saved by training's code; the reference log-probs
come from the pre-pass, the loss from the training step's objective. TRL's:
DPOTrainer's own loss (trl's `_compute_loss`, with its collator) on the HF
exports of the two checkpoints, for the same token
ids: the bundled pairs preprocessed with the chat template.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from chatbaker_megatron import parallel
from chatbaker_megatron.checkpoint.layout import latest_checkpoint
from chatbaker_megatron.checkpoint.load import load_checkpoint
from chatbaker_megatron.checkpoint.run_config import model_config_from_dict
from chatbaker_megatron.checkpoint.state import read_common
from chatbaker_megatron.config.optim import OptimConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.data.datasets.preference import PreferenceDataset
from chatbaker_megatron.data.demo.prepare import PREFERENCE_SAMPLES
from chatbaker_megatron.data.preprocess.preference_pairs import parse_preference
from chatbaker_megatron.data.preprocess.preference_tokenize import TokenizedPair, tokenize_pairs
from chatbaker_megatron.data.templates import load_template
from chatbaker_megatron.data.tokenizer.load import load_tokenizer
from chatbaker_megatron.model.sharding import full_state
from chatbaker_megatron.training.batches import global_batch
from chatbaker_megatron.training.engine import build_engine
from chatbaker_megatron.training.preference import PreferenceTraining, reference_prepass
from chatbaker_megatron.training.step import eval_step
from tests.support import tiny_checkpoints as tiny

PAIR_IDS = ("identity-en-021", "refusal-ko-041", "helpful-en-121", "refusal-en-056")
ALPHA = 0.5
LOSSES = {  # ours -> TRL's loss types and weights
    "dpo": (["sigmoid"], [1.0]),
    "ipo": (["ipo"], [1.0]),
    "rpo": (["sigmoid", "sft"], [1.0, ALPHA]),
}
BETA = 0.3
TOL = {"abs": 2e-5, "rel": 1e-5}
VOCAB_ROWS = ("word_embeddings.weight", "output_layer.weight")
UNPADDED = 4  # tiny.VOCAB = 300 is a multiple: no padding rows


def tokenized_pairs(tokenizer_dir: Path) -> list[TokenizedPair]:
    """The chosen pairs of the bundled set, with a short system turn (the tiny model's
    positions end at 512)."""
    records = {}
    with open(PREFERENCE_SAMPLES, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            records[record["id"]] = record
    pairs = []
    for key in PAIR_IDS:
        record = records[key]
        system = {"from": "system", "value": "ChatBaker."}
        pairs.append(
            parse_preference({**record, "conversations": [system, *record["conversations"]]})
        )
    tokenizer = load_tokenizer(tokenizer_dir)
    results = tokenize_pairs(tokenizer, load_template("chatbaker"), pairs, seq_length=4096)
    assert all(isinstance(r, TokenizedPair) for r in results), results
    return results


def _engine(checkpoint: str):
    """The checkpoint's model with its vocabulary padding cut off.

    megatron's log-softmax runs over the padded vocabulary (rows no token id
    reaches: zeros after an import, random in these test checkpoints); Hugging
    Face's over the tokenizer's. Cut to VOCAB rows, both see the same logits.
    """
    path = latest_checkpoint(checkpoint) or checkpoint
    model = model_config_from_dict(read_common(path)["config"]["model"], path)
    common = {
        "vocab_size": tiny.VOCAB,
        "max_sequence_length": 512,
        "train_iters": 1,
        "global_batch_size": len(PAIR_IDS),
    }
    optim = OptimConfig(warmup_iters=0)  # a warmup must be shorter than the 1-iteration run
    padded = build_engine(model, ParallelConfig(), optim, **common)
    load_checkpoint(path, padded, weights_only=True)
    state = {
        name: tensor[: tiny.VOCAB] if name.endswith(VOCAB_ROWS) else tensor
        for name, tensor in full_state(padded.chunks).items()
    }
    unpadded = replace(model, make_vocab_size_divisible_by=UNPADDED)
    return build_engine(unpadded, ParallelConfig(), optim, full_state=state, **common)


def ours_on_rank(policy: str, reference: str, pairs: list[TokenizedPair]):
    """The reference's pre-pass, then each loss's step objective on the policy."""
    ctx = parallel.initialize(ParallelConfig(), seed=1234)
    store = []
    for pair in pairs:
        for side in (pair.chosen, pair.rejected):
            store += [side.ids, side.targets.astype(np.uint8)]
    row = max(p.length for p in pairs)
    dataset = PreferenceDataset(
        store, np.arange(len(pairs)), seq_length=row, pad_id=0, seed=1, epochs=1
    )
    shape = {
        "global_batch_size": len(pairs),
        "micro_batch_size": 2,
        "dp": 1,
        "dp_rank": 0,
        "plat": ctx.platform,
    }
    table = reference_prepass(_engine(reference), [dataset], **shape)
    policy_engine = _engine(policy)
    results = {}
    for loss in LOSSES:
        settings = SimpleNamespace(loss=loss, beta=BETA, label_smoothing=0.0, rpo_alpha=ALPHA)
        training = PreferenceTraining(settings, table, len(pairs))
        batches = global_batch(dataset, start=0, **shape)
        training.attach(batches)
        result = eval_step(policy_engine, batches, training.objective)
        results[loss] = {"loss": result.loss, **training.figures(result.sums, result.tokens)}
    return results


def trl_figures(policy_hf: Path, reference_hf: Path, pairs: list[TokenizedPair], tmp: Path):
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tokenizer = AutoTokenizer.from_pretrained(str(policy_hf))
    examples = [
        {
            "prompt_ids": p.chosen.ids[: p.prompt_tokens].tolist(),
            "chosen_ids": p.chosen.ids[p.prompt_tokens :].tolist(),
            "rejected_ids": p.rejected.ids[p.prompt_tokens :].tolist(),
        }
        for p in pairs
    ]
    inputs = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(examples)
    text = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    results = {}
    for loss, (loss_type, weights) in LOSSES.items():
        policy = LlamaForCausalLM.from_pretrained(str(policy_hf), dtype=torch.float32).eval()
        reference = LlamaForCausalLM.from_pretrained(str(reference_hf), dtype=torch.float32)
        args = DPOConfig(
            output_dir=str(tmp / loss),
            beta=BETA,
            loss_type=loss_type,
            loss_weights=weights,
            report_to="none",
            use_cpu=True,
            bf16=False,  # TRL's default on CPU would run the reference under bf16 autocast
            disable_tqdm=True,
        )
        trainer = DPOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=text,
            processing_class=tokenizer,
        )
        with torch.no_grad():
            value = trainer._compute_loss(trainer.model, dict(inputs), False)
        metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
        results[loss] = {
            "loss": float(value),
            "rewards_chosen": metrics["rewards/chosen"],
            "rewards_rejected": metrics["rewards/rejected"],
            "reward_accuracy": metrics["rewards/accuracies"],
            "reward_margin": metrics["rewards/margins"],
            "logps_chosen": metrics["logps/chosen"],
            "logps_rejected": metrics["logps/rejected"],
        }
    return results


def save_reference_on_rank(root: str, config: dict) -> None:
    """The reference: other random weights of the tiny model, saved as training saves them."""
    from chatbaker_megatron.checkpoint.save import save_checkpoint
    from chatbaker_megatron.checkpoint.state import TrainState
    from chatbaker_megatron.model.sharding import load_full_state

    engine = tiny._engine(ParallelConfig())
    shapes = {name: t.shape for name, t in full_state(engine.chunks).items()}
    load_full_state(engine.chunks, tiny.random_state(shapes, seed=1))
    save_checkpoint(root, engine, TrainState(), config, keep_last=1)


@pytest.mark.parametrize("loss", LOSSES)
def test_step_loss_and_rewards_equal_trl(loss, comparison):
    ours, theirs = comparison
    for key, value in theirs[loss].items():
        assert ours[loss][key] == pytest.approx(value, **TOL), f"{loss} {key}"
    # Not a degenerate comparison: the models differ, so do the rewards.
    assert abs(ours[loss]["reward_margin"]) > 1e-3


@pytest.fixture(scope="module")
def comparison(ranks, layout_checkpoint, exported, tokenizer_dir, tmp_path_factory):
    from chatbaker_megatron.convert.export_hf import export_hf

    _, policy_root = layout_checkpoint("tp1_sft")
    run_dir = tmp_path_factory.mktemp("reference")
    reference_root = run_dir / "checkpoints"
    config = tiny.run_config(tokenizer_dir, run_dir, "sft")
    ranks.run(1, save_reference_on_rank, str(reference_root), config)
    reference_hf = run_dir / "hf"
    export_hf(reference_root, reference_hf, progress=False)
    pairs = tokenized_pairs(tokenizer_dir)
    (ours,) = ranks.run(1, ours_on_rank, str(policy_root), str(reference_root), pairs)
    theirs = trl_figures(exported("tp1_sft"), reference_hf, pairs, tmp_path_factory.mktemp("trl"))
    return ours, theirs
