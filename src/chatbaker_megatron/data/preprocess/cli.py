"""`chatbaker preprocess`: jsonl (or SFT conversations) -> megatron .bin/.idx indexed dataset."""

from __future__ import annotations

import argparse
import glob
import os
import signal
import sys

from chatbaker_megatron.data.corpus import ON_ERROR_CHOICES, BadInputError
from chatbaker_megatron.data.preprocess.disk_space import OutputDiskError
from chatbaker_megatron.data.preprocess.pipeline import FORMATS, preprocess
from chatbaker_megatron.data.preprocess.scaleout_cli import (
    add_scaleout_arguments,
    is_scaleout,
    run_scaleout,
)
from chatbaker_megatron.data.templates import TEMPLATES
from chatbaker_megatron.data.tokenizer.fast import ENCODERS
from chatbaker_megatron.stop_signals import StopRequested


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILE",
        help="input files or quoted globs (each glob's matches sorted), in order: .jsonl "
        "(one JSON object per line); for --format sft/preference also .json (a JSON array)",
    )
    parser.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer directory")
    parser.add_argument(
        "--output-prefix",
        required=True,
        metavar="PREFIX",
        help="writes PREFIX.bin, PREFIX.idx and PREFIX.meta.json",
    )
    parser.add_argument(
        "--json-key",
        default="text",
        help="text field of each record, --format text (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="encoding processes; 0 encodes in this process (default: the number of CPUs, "
        f"{os.cpu_count() or 1}; with --tasks: per task, 0 locally, --cpus-per-task on SLURM)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        dest="fmt",
        help="text: pretraining documents; sft: ShareGPT conversations; preference: "
        "chosen/rejected pairs (docs/data.md) (default: %(default)s)",
    )
    parser.add_argument(
        "--chat-template",
        default="chatbaker",
        metavar="NAME",
        help=f"--format sft/preference: {', '.join(TEMPLATES)} or a .yaml file "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--seq-length",
        type=int,
        default=2048,
        metavar="N",
        help="--format sft: sequence length for the truncation and packing report; "
        "--format preference: the training sequence length, which holds both sides of "
        "a pair (longer pairs are bad records) (default: %(default)s)",
    )
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="fail",
        help="bad records (invalid JSON, missing key, non-UTF-8, empty): stop "
        "at the first (fail) or skip and count them (default: %(default)s)",
    )
    parser.add_argument(
        "--encoder",
        choices=ENCODERS,
        default="auto",
        help="--format text: tiktoken (the tokenizer's ids, several times faster; refused for "
        "a tokenizer it cannot reproduce exactly), hf (the tokenizers library) or auto: "
        "tiktoken where exact, else hf (default: %(default)s)",
    )
    parser.add_argument(
        "--no-progress", action="store_false", dest="progress", help="no progress bar"
    )
    add_scaleout_arguments(parser)


# The first bytes of compressed files, which preprocess does not read (chatbaker curate does).
COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"BZh": "bzip2",
    b"\xfd7zXZ": "xz",
}


def check_not_compressed(path: str) -> None:
    """Refuse a compressed input by its first bytes (whatever its name) with what is read."""
    with open(path, "rb") as f:
        head = f.read(6)
    kind = next((name for magic, name in COMPRESSED_MAGIC.items() if head.startswith(magic)), None)
    if kind is not None:
        raise BadInputError(
            f"{path} is {kind}-compressed; chatbaker preprocess reads uncompressed .jsonl (and, for "
            "--format sft/preference, .json): decompress it first (e.g. `gunzip -k`), or run "
            "`chatbaker curate` on it, which reads .jsonl.gz and writes .jsonl"
        )


def input_paths(patterns: list[str]) -> list[str]:
    """The input files in order; a pattern that is not a file is a glob (its matches sorted).
    A compressed file is refused (check_not_compressed)."""
    paths = []
    for pattern in patterns:
        if os.path.isfile(pattern) or not glob.has_magic(pattern):
            paths.append(pattern)
            continue
        matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not matches:
            raise FileNotFoundError(f"{pattern}: no input file matches")
        paths += matches
    for path in paths:
        if os.path.isfile(path):
            check_not_compressed(path)
    return paths


def run(args: argparse.Namespace) -> int:
    try:
        inputs = input_paths(args.input)
        if is_scaleout(args):
            return run_scaleout(args, inputs)
        stats = preprocess(
            inputs,
            args.tokenizer,
            args.output_prefix,
            fmt=args.fmt,
            json_key=args.json_key,
            workers=(os.cpu_count() or 1) if args.workers is None else args.workers,
            chat_template=args.chat_template,
            seq_length=args.seq_length,
            on_error=args.on_error,
            progress=args.progress,
            encoder=args.encoder,
        )
    except (BadInputError, ValueError, FileNotFoundError, OutputDiskError) as err:
        print(f"chatbaker preprocess: error: {err}", file=sys.stderr)
        return 1
    except (StopRequested, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, StopRequested) else signal.SIGINT
        name = signal.Signals(signum).name
        print(f"chatbaker preprocess: stopped by {name}; partial files removed", file=sys.stderr)
        return 128 + signum  # the shell's code for a death by that signal
    print(stats.summary())
    return 0
