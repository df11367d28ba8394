"""`chatbaker tokenizer train`: train the byte-level BPE tokenizer, report fertility."""

from __future__ import annotations

import argparse
import sys
import time

from chatbaker_megatron.data.corpus import ON_ERROR_CHOICES, BadInputError
from chatbaker_megatron.data.templates import TEMPLATES
from chatbaker_megatron.data.tokenizer.fertility import format_fertility
from chatbaker_megatron.data.tokenizer.train import DEFAULT_VOCAB_SIZE, train_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser(
        "train",
        help="train a byte-level BPE tokenizer on Korean/English .jsonl or .txt files",
        description="Train a byte-level BPE tokenizer (NFC-normalised) and write DIR/tokenizer.json "
        "with the config files transformers' PreTrainedTokenizerFast needs. Part of every "
        "file's documents is held out (evenly spaced) and used to report fertility "
        "(tokens per character and per word) for Korean and English.",
    )
    train.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help=".jsonl files (one JSON object per line) or .txt files (one document per line)",
    )
    train.add_argument(
        "--vocab-size",
        type=int,
        default=DEFAULT_VOCAB_SIZE,
        metavar="N",
        help="vocabulary size including the 5 special tokens (default: %(default)s)",
    )
    train.add_argument("--output", required=True, metavar="DIR", help="output directory")
    train.add_argument(
        "--json-key", default="text", help="text field of .jsonl records (default: %(default)s)"
    )
    train.add_argument(
        "--heldout-fraction",
        type=float,
        default=0.02,
        metavar="F",
        help="fraction of documents held out for the fertility report (default: %(default)s)",
    )
    train.add_argument(
        "--min-frequency",
        type=int,
        default=2,
        metavar="N",
        help="minimum pair count for a merge (default: %(default)s)",
    )
    train.add_argument(
        "--chat-template",
        default="chatbaker",
        metavar="NAME",
        help=f"chat template written to tokenizer_config.json: {', '.join(TEMPLATES)}"
        " or a .yaml file (default: %(default)s)",
    )
    train.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="fail",
        help="bad input records: stop at the first (fail) or skip and count them "
        "(default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        result = train_tokenizer(
            args.input,
            args.output,
            vocab_size=args.vocab_size,
            json_key=args.json_key,
            heldout_fraction=args.heldout_fraction,
            min_frequency=args.min_frequency,
            chat_template=args.chat_template,
            on_error=args.on_error,
        )
    except (BadInputError, ValueError, FileNotFoundError) as err:
        print(f"chatbaker tokenizer train: error: {err}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(f"held-out fertility ({args.heldout_fraction:g} of each file's documents):")
    print(format_fertility(result.fertility))
    print(result.errors.summary())
    print(
        f"tokenizer: vocab {result.tokenizer.get_vocab_size():,} trained on "
        f"{result.train_docs:,} documents in {elapsed:.1f}s -> {result.output_dir}/tokenizer.json"
    )
    return 0
