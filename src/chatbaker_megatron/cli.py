"""The `chatbaker` command: one verb per pipeline stage.

Each verb lives in the module that owns the work; that module exposes
`add_arguments(parser)` and `run(args) -> int`, or, for verbs whose command
line Hydra parses (train), `main_argv(argv) -> int`, which receives the rest
of the command line untouched.

Known third-party notices and transformers' progress bars (notices.py) are
hidden before the verb's module is imported, datatrove's console log by its
executors (data/executors.py); `chatbaker --verbose VERB ...` shows them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from chatbaker_megatron import notices

# verb -> (module, one-line help). Modules are imported only when their verb
# runs, so `chatbaker --help` stays fast and a verb's heavy imports (torch,
# megatron, transformers) are paid only by that verb.
VERBS: dict[str, tuple[str, str]] = {
    "train": ("chatbaker_megatron.train", "pretrain or fine-tune (Hydra overrides; runs torchrun)"),
    "prepare-data": (
        "chatbaker_megatron.data.demo.cli",
        "build the data a config asks for (the demo corpus) without training",
    ),
    "tokenizer": (
        "chatbaker_megatron.data.tokenizer.cli",
        "train or inspect the byte-level BPE tokenizer",
    ),
    "curate": (
        "chatbaker_megatron.data.curate.cli",
        "raw jsonl/parquet -> clean, deduplicated, PII-scrubbed jsonl per language (datatrove)",
    ),
    "preprocess": (
        "chatbaker_megatron.data.preprocess.cli",
        "jsonl -> megatron .bin/.idx indexed dataset",
    ),
    "plan": ("chatbaker_megatron.plan.cli", "rank parallel layouts: memory, step time, MFU, days"),
    "export-hf": ("chatbaker_megatron.convert.export_hf", "checkpoint -> HF Llama folder"),
    "import-hf": ("chatbaker_megatron.convert.import_hf", "HF Llama folder -> checkpoint"),
    "generate": ("chatbaker_megatron.inference.generate_cli", "continue a text prompt"),
    "chat": ("chatbaker_megatron.inference.chat_cli", "multi-turn chat REPL, streamed"),
    "serve": (
        "chatbaker_megatron.serve.cli",
        "OpenAI-compatible chat server + web page (batched, filtered)",
    ),
    "eval": ("chatbaker_megatron.eval.cli", "lm-eval KoBEST/English -> table, chart"),
    "eval-chat": (
        "chatbaker_megatron.eval_chat.cli",
        "chat models judged by an LLM (single / pairwise) or chrF, Korean-aware -> report",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="chatbaker", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show what is hidden by default: known third-party notices, "
        "transformers' loading bars, datatrove's log",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_module, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    if argv[:1] == ["--verbose"]:
        argv = argv[1:]
        # Read by notices.hide_known_notices and data/executors.py here and in the
        # verb's child processes.
        os.environ[notices.VERBOSE_ENV] = "1"
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    verb, rest = argv[0], argv[1:]
    notices.hide_known_notices()
    module = importlib.import_module(VERBS[verb][0])
    if hasattr(module, "main_argv"):
        return int(module.main_argv(rest) or 0)
    verb_parser = argparse.ArgumentParser(prog=f"chatbaker {verb}", description=VERBS[verb][1])
    module.add_arguments(verb_parser)
    args = verb_parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
