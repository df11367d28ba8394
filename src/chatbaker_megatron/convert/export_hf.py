"""`chatbaker export-hf`: a training checkpoint (any TP/PP/VPP) -> a Hugging Face LlamaForCausalLM folder.

Output folder:
    config.json, generation_config.json
    model-0000i-of-0000N.safetensors + model.safetensors.index.json
    tokenizer.json, tokenizer_config.json (+ special_tokens_map.json)
    chatbaker_template.yaml            SFT models: the chat template as data
    chatbaker.json                     provenance: run config, train state, metrics
    README.md                          model card

Tensors stream layer by layer from the checkpoint into shards of at most
--max-shard-size, so memory stays bounded by one shard (or the largest
tensor), not by the model. The folder is written under OUTPUT.partial and
renamed when complete.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from chatbaker_megatron.checkpoint.layout import CheckpointError
from chatbaker_megatron.checkpoint.reader import MegatronCheckpoint
from chatbaker_megatron.checkpoint.run_config import run_chat_template, run_tokenizer_dir
from chatbaker_megatron.convert.hf_config import (
    CONFIG_FILE,
    DTYPES,
    GENERATION_CONFIG_FILE,
    generation_config_dict,
    llama_config_dict,
    write_json,
)
from chatbaker_megatron.convert.layout import Arch, hf_names, to_hf
from chatbaker_megatron.convert.model_card import (
    PROVENANCE_FILE,
    provenance_from_checkpoint,
    render_model_card,
)
from chatbaker_megatron.convert.safetensors_io import ShardWriter, parse_size
from chatbaker_megatron.convert.tokenizer_files import write_tokenizer
from chatbaker_megatron.data.templates import Message, load_template, render_prompt
from chatbaker_megatron.data.tokenizer.load import load_tokenizer
from chatbaker_megatron.model.sharding import EMBEDDING, FINAL_NORM, OUTPUT_LAYER

DEFAULT_SHARD_SIZE = "2GB"


@dataclass(frozen=True)
class ExportResult:
    output: Path
    checkpoint: Path
    shards: list[str]
    total_bytes: int


def _prepare_output(output: Path, overwrite: bool) -> Path:
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output}: exists and is not empty (pass --overwrite to replace it)")
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def export_hf(
    checkpoint: str | Path,
    output: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportResult:
    """Write the Hugging Face folder for a checkpoint (directory, or a root with `latest`)."""
    source = MegatronCheckpoint(checkpoint)
    config = source.config
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else run_tokenizer_dir(config, str(source.path))
    tokenizer = load_tokenizer(tok_dir)
    arch = Arch(source.model, tokenizer.vocab_size)
    template_name = run_chat_template(config)
    template = load_template(template_name) if template_name else None
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    target_dtype = DTYPES[dtype] if dtype else source.dtype()
    output = Path(output).expanduser()
    staging = _prepare_output(output, overwrite)

    writer = ShardWriter(staging, parse_size(max_shard_size))
    steps = [[EMBEDDING], *source.layer_names(), [FINAL_NORM, OUTPUT_LAYER]]
    written: list[str] = []
    for names in tqdm(steps, desc="export-hf", unit="layer", disable=not progress):
        tensors = source.read(names)
        for name in names:
            for hf_name, tensor in to_hf(name, tensors[name], arch):
                writer.add(hf_name, tensor.to(target_dtype))
                written.append(hf_name)
        del tensors
    missing = sorted(set(hf_names(arch)) - set(written))
    if missing:
        raise ValueError(f"{source.path}: no checkpoint tensors for {', '.join(missing[:5])}")
    shards = writer.close()

    hf_config = llama_config_dict(source.model, tokenizer, target_dtype)
    write_json(staging / CONFIG_FILE, hf_config)
    write_json(staging / GENERATION_CONFIG_FILE, generation_config_dict(tokenizer))
    write_tokenizer(tok_dir, staging, template)
    provenance = provenance_from_checkpoint(source.common)
    write_json(staging / PROVENANCE_FILE, provenance)
    chat_prompt = None
    if template is not None:
        chat_prompt = render_prompt(
            template,
            [Message("user", "안녕하세요? 자기소개를 해 주세요.")],
            bos_token=tokenizer.bos_token,
            eos_token=tokenizer.eos_token,
        )
    kind = (config.get("data") or {}).get("kind", "pretrain")  # the model card's title
    (staging / "README.md").write_text(
        render_model_card(provenance, hf_config, kind, chat_prompt), encoding="utf-8"
    )
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)
    return ExportResult(output, source.path, shards, writer.total_bytes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint dir, or a checkpoints dir with `latest`"
    )
    parser.add_argument("--output", required=True, help="the Hugging Face folder to write")
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer dir (default: the run config's data.tokenizer)"
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="weights dtype (default: as trained)"
    )
    parser.add_argument("--max-shard-size", default=DEFAULT_SHARD_SIZE, help="e.g. 2GB, 500MB")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="then compare our logits with transformers' on the export (loads the model twice)",
    )
    parser.add_argument(
        "--verify-atol", type=float, default=1e-4, help="largest logit difference --verify accepts"
    )


def run(args: argparse.Namespace) -> int:
    try:
        result = export_hf(
            args.checkpoint,
            args.output,
            tokenizer_dir=args.tokenizer,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (CheckpointError, FileNotFoundError) as err:
        # A missing, damaged or unverifiable checkpoint: its one line, no traceback.
        print(f"chatbaker export-hf: error: {err}", file=sys.stderr)
        return 1
    size = result.total_bytes / 2**20
    print(
        f"exported {result.checkpoint} -> {result.output} "
        f"({len(result.shards)} shard(s), {size:.1f} MiB of weights)"
    )
    if not args.verify:
        return 0
    from chatbaker_megatron.convert.verify import compare_logits

    check = compare_logits(result.checkpoint, result.output, tokenizer_dir=args.tokenizer)
    verdict = "ok" if check.max_abs_diff <= args.verify_atol else "FAILED"
    print(
        f"verify {verdict}: max |logits(ours) - logits(transformers)| = {check.max_abs_diff:.3e} "
        f"over {check.tokens} tokens (|logits| up to {check.max_abs_logit:.2f}, "
        f"accepted <= {args.verify_atol:g})"
    )
    return 0 if verdict == "ok" else 1
