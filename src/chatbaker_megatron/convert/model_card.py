"""Provenance of exported weights and the model card (README.md) rendered from it.

The provenance (`chatbaker.json` in the exported folder) records how the
weights were trained: the run config, the training state and the last
metrics of the run. Import keeps it in the checkpoint it writes, so
exporting that checkpoint again describes the same training, byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

PROVENANCE_FILE = "chatbaker.json"
PROVENANCE_FORMAT = 1


def _metrics_summary(run_dir: str | None, iteration: int) -> dict[str, Any]:
    """The last logged figures at or before `iteration` from <run_dir>/metrics.jsonl."""
    if not run_dir:
        return {}
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return {}
    summary: dict[str, Any] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or record.get("iteration", iteration + 1) > iteration:
            continue
        for key, out in (
            ("loss", "train_loss"),
            ("valid_loss", "valid_loss"),
            ("tokens_per_s", "tokens_per_s"),
        ):
            if key in record:
                summary[out] = record[key]
                summary[f"{out}_iteration"] = record["iteration"]
    return summary


def provenance_from_checkpoint(common: dict[str, Any]) -> dict[str, Any]:
    """Provenance of a checkpoint: carried over from an import, else from its own training run."""
    if "provenance" in common:
        return common["provenance"]
    config = common["config"]
    train_state = dict(common.get("train_state") or {})
    iteration = int(train_state.get("iteration", 0))
    seq_length = (config.get("train") or {}).get("seq_length")
    tokens = train_state.get("consumed_samples", 0) * seq_length if seq_length else None
    return {
        "format": PROVENANCE_FORMAT,
        "source": "chatbaker_megatron training run",
        "config": config,
        "train_state": train_state,
        "tokens_trained": tokens,
        "metrics": _metrics_summary(config.get("run_dir"), iteration),
    }


def _format(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


# The title's words for a run's data.kind (a pretraining run: "pretrained LM").
CARD_KINDS = {"sft": "chat model, SFT", "preference": "chat model, SFT + preference tuning"}


def render_model_card(
    provenance: dict[str, Any], hf_config: dict[str, Any], kind: str, chat_prompt: str | None
) -> str:
    """README.md of the exported model."""
    config = provenance.get("config") or {}
    name = (config.get("model") or {}).get("name") or config.get("name") or "chatbaker"
    title = f"ChatBaker {name} ({CARD_KINDS.get(kind, 'pretrained LM')})"
    state = provenance.get("train_state") or {}
    metrics = provenance.get("metrics") or {}
    rows = [
        ("layers", hf_config["num_hidden_layers"]),
        ("hidden size", hf_config["hidden_size"]),
        ("attention heads", hf_config["num_attention_heads"]),
        ("key/value heads", hf_config["num_key_value_heads"]),
        ("FFN (SwiGLU) size", hf_config["intermediate_size"]),
        ("vocabulary", hf_config["vocab_size"]),
        ("max positions", hf_config["max_position_embeddings"]),
        ("RMSNorm eps", hf_config["rms_norm_eps"]),
        ("RoPE theta", hf_config["rope_theta"]),
        ("dtype", hf_config.get("dtype")),
    ]
    lines = [
        "---",
        "language: [ko, en]",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [chatbaker, llama, megatron-core]",
        "---",
        "",
        f"# {title}",
        "",
        "A Korean-English LLaMA-architecture model (RMSNorm pre-norm, rotary position",
        "embeddings, SwiGLU MLP, no biases, untied embeddings) trained with",
        "chatbaker_megatron on megatron-core and exported to `LlamaForCausalLM`.",
        "",
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {_format(value)} |" for key, value in rows),
        "",
        "## Training",
        "",
        f"- source: {provenance.get('source', 'unknown')}",
        f"- iterations: {state.get('iteration', 'unknown')}",
        f"- tokens trained: {provenance.get('tokens_trained') or 'unknown'}",
    ]
    if metrics:
        lines += ["", "| metric | value | at iteration |", "|---|---|---|"]
        for key in ("train_loss", "valid_loss", "tokens_per_s"):
            if key in metrics:
                lines.append(f"| {key} | {_format(metrics[key])} | {metrics[f'{key}_iteration']} |")
    else:
        lines += ["", "No training metrics were found for this checkpoint."]
    if chat_prompt is not None:
        lines += [
            "",
            "## Chat format",
            "",
            "The tokenizer's `chat_template` renders conversations exactly as SFT training",
            "did (also shipped as data in `chatbaker_template.yaml`). A one-turn prompt:",
            "",
            "```",
            chat_prompt,
            "```",
        ]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        "```",
        "",
        "## Training config",
        "",
        "```yaml",
        yaml.safe_dump(config, allow_unicode=True, sort_keys=True).rstrip(),
        "```",
        "",
        "## Limitations",
        "",
        "Weak at reasoning and maths, may misidentify itself, not safety-tuned.",
        "",
    ]
    return "\n".join(lines)
