"""`chatbaker serve`: the OpenAI-compatible chat server and web page (docs/serve.md).

The model runs in transformers (the batched engine needs a per-row padded KV
cache, which megatron's static inference context does not offer), so
--checkpoint is first exported to a temporary HF folder with export-hf's
code; --hf is loaded as it is. The model runs in a process of its own
(serve/engine_process.py; `--engine thread` keeps it in this one). The sampling options are the defaults for
the fields a request leaves out; as in OpenAI's API, no repetition penalty
unless --repetition-penalty (or a request's `repetition_penalty`) asks for one.

--upstream URL serves no model here: the same routes forward to another
OpenAI-compatible engine (vLLM, SGLang, TGI, `transformers serve`), see
serve/upstream.py; the model options then do not apply.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import torch
from fastapi import FastAPI

from chatbaker_megatron.inference.backends import HFFolder
from chatbaker_megatron.inference.chat_cli import turn_stops
from chatbaker_megatron.inference.filters import InputFilter, load_filter
from chatbaker_megatron.inference.options import (
    add_model_arguments,
    add_sampling_arguments,
    add_template_arguments,
    chat_template,
    sampling_config,
)
from chatbaker_megatron.serve.app import create_app
from chatbaker_megatron.serve.engine import (
    EngineSettings,
    RequestEngine,
    check_limits,
    load_engine,
)
from chatbaker_megatron.serve.engine_process import EngineProcess
from chatbaker_megatron.serve.limits import (
    DEFAULT_MAX_BODY_BYTES,
    RateLimit,
    longest_token_bytes,
)
from chatbaker_megatron.serve.moderation import ModerationFilter
from chatbaker_megatron.serve.request_log import RequestLog
from chatbaker_megatron.serve.screening import Screening
from chatbaker_megatron.serve.server import ServedModel, Server
from chatbaker_megatron.serve.upstream import Upstream, upstream_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = add_model_arguments(parser)
    source.add_argument(
        "--upstream",
        metavar="URL",
        help="serve no model here: forward to the OpenAI-compatible engine at URL "
        "(http://host:port/v1), behind the same keys, limits, screening and log",
    )
    parser.add_argument(
        "--upstream-model",
        default=None,
        help="with --upstream: the model to ask it for (default: the first it lists)",
    )
    parser.add_argument("--upstream-key", default=None, help="with --upstream: its API key")
    parser.add_argument(
        "--upstream-timeout",
        type=float,
        default=60.0,
        help="with --upstream: seconds to wait for its answer (for a stream: each chunk); then 504",
    )
    parser.add_argument(
        "--moderate-output",
        action="store_true",
        help="with --upstream: the input filters also screen the replies "
        "(a refused reply ends with finish_reason content_filter)",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        metavar="PER_MINUTE",
        help="requests a minute per API key (per client address without keys); "
        "more get 429 with Retry-After (default: no limit)",
    )
    parser.add_argument(
        "--rate-burst",
        type=int,
        default=None,
        help="requests a key may send at once within its rate (default: the rate)",
    )
    add_template_arguments(parser)
    parser.add_argument(
        "--model-name", default=None, help="the id /v1/models lists (default: the folder's name)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="accept only requests with `Authorization: Bearer KEY` (repeatable; default: open)",
    )
    parser.add_argument("--max-batch", type=int, default=16, help="requests decoded together")
    parser.add_argument(
        "--engine",
        choices=("process", "thread"),
        default="process",
        help="where the model runs: its own process (default: the HTTP side never takes its "
        "GIL) or a thread of the server's (one process, e.g. to profile or debug)",
    )
    parser.add_argument(
        "--max-queue", type=int, default=64, help="requests waiting for a row; more get 429"
    )
    parser.add_argument(
        "--moderation-url",
        default=None,
        metavar="URL",
        help="also screen inputs with the OpenAI-compatible API at URL (http://host:port/v1)",
    )
    parser.add_argument("--moderation-key", default=None, help="API key of the moderation service")
    parser.add_argument("--moderation-model", default=None, help="moderation model to ask for")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's); leave a core to the HTTP side",
    )
    parser.add_argument(
        "--request-log", default=None, metavar="PATH", help="append one JSON line per exchange"
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="refuse larger request bodies with 413, unread (default: 1 MiB)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=5.0,
        help="seconds streams in flight may finish after SIGTERM before they are cut",
    )
    add_sampling_arguments(parser, max_new_tokens=256, repetition_penalty=1.0)


@contextlib.contextmanager
def _model_folder(args: argparse.Namespace) -> Iterator[tuple[Path, str]]:
    """The HF folder to serve and the model's name; --checkpoint is exported to a
    temporary folder, which lasts until the model is loaded from it."""
    if args.hf:
        if args.tokenizer:
            raise ValueError(
                "--tokenizer goes with --checkpoint; an HF folder has its own tokenizer"
            )
        yield Path(args.hf), Path(args.hf).resolve().name
        return
    from chatbaker_megatron.checkpoint.reader import MegatronCheckpoint
    from chatbaker_megatron.convert.export_hf import export_hf

    source = MegatronCheckpoint(args.checkpoint)
    name = str(source.config.get("name") or source.path.parent.name)
    with tempfile.TemporaryDirectory(prefix="chatbaker-serve-") as tmp:
        export_hf(source.path, Path(tmp) / "hf", tokenizer_dir=args.tokenizer, progress=False)
        yield Path(tmp) / "hf", name


def _start_engine(args: argparse.Namespace, hf_dir: Path) -> tuple[RequestEngine, HFFolder]:
    """The engine (its own process unless --engine thread) and the folder's tokenizer,
    context length and template."""
    check_limits(args.max_batch, args.max_queue)
    settings = EngineSettings(hf_dir, args.max_batch, args.max_queue, args.threads)
    if args.engine == "thread":
        return load_engine(settings)
    return EngineProcess(settings), HFFolder(hf_dir)


class _SharedOptions(TypedDict):
    """The `Server` arguments of both kinds of server, built-in engine or upstream."""

    api_keys: tuple[str, ...]
    screening: Screening
    request_log: RequestLog | None
    rate_limit: RateLimit | None


def build_app(args: argparse.Namespace) -> FastAPI:
    """The app for these arguments, model loaded; its engine starts with the server."""
    defaults = sampling_config(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    filters: list[InputFilter] = [f for f in [load_filter(args.input_filter)] if f is not None]
    if args.moderation_url:
        filters.append(
            ModerationFilter(args.moderation_url, args.moderation_key, args.moderation_model)
        )
    shared: _SharedOptions = {
        "api_keys": tuple(args.api_key),
        "screening": Screening(tuple(filters)),
        "request_log": RequestLog(args.request_log) if args.request_log else None,
        "rate_limit": RateLimit(args.rate_limit, args.rate_burst) if args.rate_limit else None,
    }
    if args.upstream:
        model = args.upstream_model or upstream_model(args.upstream, args.upstream_key)
        upstream = Upstream(args.upstream, model, args.upstream_key, args.upstream_timeout)
        server = Server(
            upstream, args.model_name or model, moderate_output=args.moderate_output, **shared
        )
        return create_app(server, max_body_bytes=args.max_body_bytes)
    if args.moderate_output:
        raise ValueError("--moderate-output: only with --upstream")
    with _model_folder(args) as (hf_dir, name):
        engine, folder = _start_engine(args, hf_dir)
    template = chat_template(args, folder.template)
    stop_ids, stop_strings = turn_stops(template, folder.tokenizer)
    served = ServedModel(
        model_id=args.model_name or name,
        tokenizer=folder.tokenizer,
        template=template,
        max_length=folder.max_length,
        defaults=defaults,
        turn_stop_ids=stop_ids,
        turn_stop_strings=stop_strings,
        longest_token_bytes=longest_token_bytes(folder.tokenizer),
        system=args.system,
    )
    server = Server(engine, served.model_id, served, **shared)
    return create_app(server, max_body_bytes=args.max_body_bytes)


def banner(base: str, model_id: str, keyed: bool) -> str:
    """The startup lines: the page, the API, a curl to try. A key is never printed."""
    key = ' -H "Authorization: Bearer $CHATBAKER_API_KEY"' if keyed else ""
    return (
        f"== chat page: {base}/   (OpenAI API: {base}/v1)\n"
        f"== try: curl {base}/v1/chat/completions{key} -H 'Content-Type: application/json' "
        f'-d \'{{"model": "{model_id}", '
        f'"messages": [{{"role": "user", "content": "안녕하세요?"}}]}}\''
        + ("\n== (set CHATBAKER_API_KEY to one of the --api-key values)" if keyed else "")
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        app = build_app(args)
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        # A bad path or value is the user's to fix: one line naming it, no traceback.
        sys.exit(f"chatbaker serve: {err}")
    print(banner(f"http://{args.host}:{args.port}", app.state.server.model_id, bool(args.api_key)))
    sys.stdout.flush()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        timeout_graceful_shutdown=args.shutdown_timeout,
    )
    return 0
