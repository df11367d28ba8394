"""`chatbaker generate`: continue one text prompt, from a training checkpoint or an HF folder.

Prints the continuation as it is generated, or with --json one object:
{"prompt", "prompt_ids", "generated_ids", "text", "stop_reason"}, so two
backends (or a checkpoint and its export) can be compared token by token.
"""

from __future__ import annotations

import argparse
import json
import sys

from chatbaker_megatron.inference.filters import load_filter
from chatbaker_megatron.inference.generator import Generator
from chatbaker_megatron.inference.options import (
    add_model_arguments,
    add_sampling_arguments,
    load_backend,
    sampling_config,
)

BLOCKED_EXIT_CODE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True, help="the text to continue")
    add_sampling_arguments(parser, max_new_tokens=64, repetition_penalty=1.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object, nothing else")


def run(args: argparse.Namespace) -> int:
    sampling = sampling_config(args)
    input_filter = load_filter(args.input_filter)
    if input_filter is not None:
        reason = input_filter.check(args.prompt)
        if reason is not None:
            print(f"input refused: {reason}", file=sys.stderr)
            return BLOCKED_EXIT_CODE
    backend = load_backend(args)
    prompt_ids = backend.tokenizer.encode(args.prompt)
    generator = Generator(backend)
    if args.json:
        result = generator.generate(prompt_ids, sampling)
        record = {
            "prompt": args.prompt,
            "prompt_ids": result.prompt_ids,
            "generated_ids": result.token_ids,
            "text": result.text,
            "stop_reason": result.stop_reason,
        }
        print(json.dumps(record, ensure_ascii=False))
        return 0

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    show(args.prompt)
    generator.generate(prompt_ids, sampling, on_text=show)
    show("\n")
    return 0
