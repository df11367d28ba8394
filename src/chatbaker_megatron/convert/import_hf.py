"""`chatbaker import-hf`: a Hugging Face LLaMA folder -> a training checkpoint at a chosen TP/PP.

Output (a checkpoints directory, usable as `train.init_from`):
    iter_0000000/                the model, in checkpoint/'s format (weights only)
    latest                       names iter_0000000
    tokenizer/                   the HF folder's tokenizer files
    chatbaker_template.yaml      the chat template, when the HF folder ships one

How: the import runs on tp * pp ranks, each building its own model chunks
at the requested layout and copying in its slices of the HF tensors (read
one tensor at a time), then all ranks write the checkpoint together with
checkpoint/'s weights-only writer, through the same atomic write as a
training run of that layout. Memory per rank is its share of the model plus
one full tensor. `chatbaker import-hf --tp 2 --pp 2` starts those ranks itself with torchrun
(one process needs no launcher). The layout matters beyond memory because
the vocabulary is padded to a multiple of 128 * TP: import at the TP the
checkpoint will be trained at.

Only model weights are written (no optimizer state): training starts from
them with `train.init_from=<output>`, which loads weights only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from chatbaker_megatron.config.checks import to_plain_dict
from chatbaker_megatron.config.data import DataConfig, SFTConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.convert.hf_config import HFModelSpec, model_config_from_hf
from chatbaker_megatron.convert.layout import HF_EMBEDDING, HF_OUTPUT_LAYER, Arch, from_hf
from chatbaker_megatron.convert.model_card import PROVENANCE_FILE, PROVENANCE_FORMAT
from chatbaker_megatron.convert.safetensors_io import HFWeights
from chatbaker_megatron.convert.tokenizer_files import write_tokenizer
from chatbaker_megatron.data.templates import TEMPLATE_FILE
from chatbaker_megatron.data.tokenizer.load import load_tokenizer

TOKENIZER_DIR = "tokenizer"


class _HFState(Mapping[str, torch.Tensor]):
    """Unsharded megatron tensors computed on demand from the HF weights (for load_full_state)."""

    def __init__(
        self, weights: HFWeights, spec: HFModelSpec, arch: Arch, vocab_rows: int, bar: tqdm
    ) -> None:
        self.weights = weights
        self.spec = spec
        self.arch = arch
        self.vocab_rows = vocab_rows
        self.bar = bar

    def _fetch(self, hf_name: str) -> torch.Tensor:
        if (
            hf_name == HF_OUTPUT_LAYER
            and self.spec.tie_word_embeddings
            and hf_name not in self.weights
        ):
            hf_name = HF_EMBEDDING
        return self.weights.get(hf_name).to(torch.float32)

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = from_hf(name, self._fetch, self.arch, self.vocab_rows)
        self.bar.update()
        return tensor

    def __contains__(self, name: object) -> bool:
        # Every name load_full_state asks for is one of the model's own parameters.
        return isinstance(name, str)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _check_layout(spec: HFModelSpec, tp: int, pp: int, hf_dir: Path) -> None:
    model = spec.model
    for what, count, size, key in (
        ("attention heads", model.num_attention_heads, tp, "--tp"),
        ("key/value heads", model.kv_heads, tp, "--tp"),
        ("FFN size", model.ffn_hidden_size, tp, "--tp"),
        ("layers", model.num_layers, pp, "--pp"),
    ):
        if size < 1 or count % size:
            raise ValueError(
                f"{key}={size}: must be >= 1 and divide the {count} {what} of {hf_dir}"
            )


def _read_provenance(hf_dir: Path, spec: HFModelSpec) -> dict[str, Any]:
    path = hf_dir / PROVENANCE_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {
        "format": PROVENANCE_FORMAT,
        "source": f"Hugging Face model {hf_dir.name}",
        "config": {"model": to_plain_dict(spec.model)},
        "train_state": {},
        "tokens_trained": None,
        "metrics": {},
    }


def _run_config(
    provenance: dict[str, Any], spec: HFModelSpec, output: Path, tp: int, pp: int
) -> dict:
    """The run config stored in the checkpoint: the model, and where its tokenizer now is."""
    from chatbaker_megatron.config.schema import RunConfig

    source_data = (provenance.get("config") or {}).get("data") or {}
    template = output / TEMPLATE_FILE
    data = DataConfig(
        kind=source_data.get("kind", "pretrain"),
        root=str(output),
        tokenizer=TOKENIZER_DIR,
        sft=SFTConfig(template=str(template) if template.is_file() else "chatbaker"),
    )
    run = RunConfig(
        name=f"{spec.model.name}-imported",
        run_dir=str(output),
        model=spec.model,
        parallel=ParallelConfig(tp=tp, pp=pp),
        data=data,
    )
    return to_plain_dict(run)


def _write_side_files(hf_dir: Path, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    write_tokenizer(hf_dir, output / TOKENIZER_DIR, None)
    if (hf_dir / TEMPLATE_FILE).is_file():
        shutil.copyfile(hf_dir / TEMPLATE_FILE, output / TEMPLATE_FILE)


def import_hf(
    hf_dir: str | Path, output: str | Path, *, tp: int = 1, pp: int = 1, progress: bool = True
) -> Path:
    """Write the checkpoint; collective over all ranks (one process: runs as a world of one).

    Returns the checkpoint directory (output/iter_0000000).
    """
    import torch.distributed as dist

    from chatbaker_megatron import parallel
    from chatbaker_megatron.checkpoint.save import save_weights
    from chatbaker_megatron.model.llama import build_model, padded_vocab_size
    from chatbaker_megatron.model.sharding import load_full_state, named_global_parameters

    hf_dir, output = Path(hf_dir).expanduser(), Path(output).expanduser().absolute()
    weights = HFWeights(hf_dir)
    tokenizer = load_tokenizer(hf_dir)
    spec = model_config_from_hf(hf_dir, hf_dir.name)
    provenance = _read_provenance(hf_dir, spec)
    name = ((provenance.get("config") or {}).get("model") or {}).get("name")
    if name:
        spec = replace(spec, model=replace(spec.model, name=name))
    if spec.vocab_size < tokenizer.vocab_size:
        raise ValueError(
            f"{hf_dir / 'config.json'}: vocab_size={spec.vocab_size} is smaller than the "
            f"tokenizer's {tokenizer.vocab_size} tokens"
        )
    _check_layout(spec, tp, pp, hf_dir)

    if "WORLD_SIZE" not in os.environ:
        parallel.ensure_process_group()
    parallel_cfg = ParallelConfig(tp=tp, pp=pp)
    ctx = parallel.initialize(parallel_cfg, seed=0)
    rank0 = ctx.rank == 0
    chunks = build_model(
        spec.model,
        parallel_cfg,
        vocab_size=tokenizer.vocab_size,
        max_sequence_length=spec.model.max_position_embeddings,
    )
    arch = Arch(spec.model, tokenizer.vocab_size)
    rows = padded_vocab_size(tokenizer.vocab_size, spec.model.make_vocab_size_divisible_by, tp)
    total = sum(1 for _ in named_global_parameters(chunks))
    with tqdm(
        total=total, desc="import-hf", unit="tensor", disable=not (progress and rank0)
    ) as bar:
        load_full_state(chunks, _HFState(weights, spec, arch, rows, bar))

    if rank0:
        _write_side_files(hf_dir, output)
    dist.barrier()  # the run config names the template file rank 0 just copied
    config = _run_config(provenance, spec, output, tp, pp)
    final = save_weights(str(output), chunks, config, {"provenance": provenance})
    parallel.destroy_model_parallel()
    return Path(final)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf", required=True, help="Hugging Face LLaMA folder (safetensors)")
    parser.add_argument("--output", required=True, help="checkpoints directory to write")
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel size (default 1)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline parallel size (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from chatbaker_megatron.launch import run_torchrun, under_torchrun

    world = args.tp * args.pp
    if world > 1 and not under_torchrun():
        argv = [
            "--hf",
            args.hf,
            "--output",
            args.output,
            "--tp",
            str(args.tp),
            "--pp",
            str(args.pp),
        ]
        if args.no_progress:
            argv.append("--no-progress")
        # A failed conversion is rerun by hand (it writes nothing until complete): no restarts.
        code = run_torchrun(
            1,
            world,
            "chatbaker_megatron.convert.import_hf",
            argv,
            max_restarts=0,
            monitor_interval=1.0,
        )
        if code:
            print(f"import-hf failed (torchrun exit code {code})", file=sys.stderr)
        return code
    path = import_hf(args.hf, args.output, tp=args.tp, pp=args.pp, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"imported {args.hf} -> {path} (tp={args.tp}, pp={args.pp})")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="chatbaker import-hf")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
