"""Command-line options shared by `chatbaker generate`, `chatbaker chat` and `chatbaker serve`."""

from __future__ import annotations

import argparse
import sys

from chatbaker_megatron.data.templates import ChatTemplate, load_template
from chatbaker_megatron.inference.backends import Backend
from chatbaker_megatron.inference.sampling import SamplingConfig


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """--checkpoint | --hf (the group, for a command with another source), and their options."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", help="training checkpoint dir (or checkpoints dir with `latest`)"
    )
    source.add_argument("--hf", help="Hugging Face model folder (e.g. from `chatbaker export-hf`)")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="with --checkpoint: tokenizer dir (default: the run config's)",
    )
    parser.add_argument(
        "--input-filter",
        default=None,
        metavar="SPEC",
        help="check inputs first: blocklist:PATH or package.module:factory (default: off)",
    )
    return source


def add_template_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--template",
        default=None,
        help="chat template name or YAML (default: the one the model was fine-tuned with)",
    )
    parser.add_argument("--system", default=None, help="system prompt (default: the template's)")


DEFAULT_TEMPLATE = "chatbaker"


def chat_template(args: argparse.Namespace, fine_tuned: ChatTemplate | None) -> ChatTemplate:
    """--template, else the template the model was fine-tuned with, else the default (noted)."""
    if args.template:
        return load_template(args.template)
    if fine_tuned is not None:
        return fine_tuned
    print(
        f"note: the model names no chat template (not an SFT model?); using {DEFAULT_TEMPLATE!r}",
        file=sys.stderr,
    )
    return load_template(DEFAULT_TEMPLATE)


def add_sampling_arguments(
    parser: argparse.ArgumentParser, *, max_new_tokens: int, repetition_penalty: float
) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (no sampling)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=0.9, help="1.0 = off")
    parser.add_argument(
        "--repetition-penalty", type=float, default=repetition_penalty, help="1.0 = off"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampling draws")


def sampling_config(args: argparse.Namespace) -> SamplingConfig:
    return SamplingConfig(
        greedy=args.greedy,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )


def load_backend(args: argparse.Namespace) -> Backend:
    from chatbaker_megatron.inference.backends import HFBackend, load_megatron_backend

    if args.hf:
        if args.tokenizer:
            raise ValueError(
                "--tokenizer goes with --checkpoint; an HF folder has its own tokenizer"
            )
        return HFBackend(args.hf)
    return load_megatron_backend(args.checkpoint, args.tokenizer)
