"""The HTTP API: OpenAI's chat/completions, completions and models routes, /health, the page.

    GET  /                       the web chat page (static/index.html)
    GET  /static/<file>          the page's other files (serve/static/)
    GET  /health                 {"status": "ok", "model", "running", "waiting", counters}
    GET  /v1/models              the one model served
    POST /v1/chat/completions    messages -> reply, streamed (SSE, ends `data: [DONE]`) or not
    POST /v1/completions         raw prompt -> continuation, streamed or not

Every error is OpenAI's body {"error": {"message", "type", "param", "code"}}:
400 for bad input (param names the field, e.g. `messages[1].role`), 400 with
code `content_filter` for an input the filter refused (the model never sees
it), 401 for a missing or wrong key (when the server has --api-key), 404 for
an unknown model, 429 when the queue is full, 503 when the moderation
service cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatbaker_megatron.data.preprocess.sft_tokenize import encode_prompt
from chatbaker_megatron.data.templates import ChatTemplate, Message
from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer
from chatbaker_megatron.inference.filters import InputFilter
from chatbaker_megatron.inference.sampling import SamplingConfig
from chatbaker_megatron.serve.engine import Engine, GenerationRequest, QueueFull
from chatbaker_megatron.serve.moderation import ModerationUnavailable
from chatbaker_megatron.serve.request_log import RequestLog
from chatbaker_megatron.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
)

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger("chatbaker.serve")


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body, status_code=err.status)


# pydantic's tags for the members of a union (`str`, `list[str]`) inside an error's location.
_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: tuple[Any, ...]) -> str | None:
    """`messages[1].role` from pydantic's ("body", "messages", 1, "role", ...)."""
    param = ""
    for part in loc[1:]:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part.isidentifier() and part not in _UNION_TAGS:
            param += f".{part}" if param else part
        else:
            break
    return param or None


def validation_error(err: RequestValidationError) -> APIError:
    first = err.errors()[0]
    if first["type"] == "json_invalid":
        reason = first.get("ctx", {}).get("error", "cannot parse")
        return APIError(400, f"the request body is not valid JSON: {reason} at {first['loc'][-1]}")
    param = _param(tuple(first["loc"]))
    if param is None:
        return APIError(400, "the request body must be a JSON object")
    got = first.get("input")
    shown = (
        "" if first["type"] == "missing" else f" (got {json.dumps(got, ensure_ascii=False)[:80]})"
    )
    return APIError(400, f"{param}: {first['msg']}{shown}", param=param)


@dataclass(frozen=True)
class ServedModel:
    """What the routes need to know about the model besides the engine."""

    model_id: str
    tokenizer: ChatBakerTokenizer
    template: ChatTemplate
    max_length: int
    defaults: SamplingConfig  # the server's sampling settings, for fields a request omits
    turn_stop_ids: tuple[int, ...]
    turn_stop_strings: tuple[str, ...]
    system: str | None = None


def _sampling(body: SamplingFields, budget: int | None, defaults: SamplingConfig) -> SamplingConfig:
    temperature = defaults.temperature if body.temperature is None else body.temperature
    return SamplingConfig(
        # OpenAI's temperature 0 means argmax.
        greedy=temperature == 0 or (body.temperature is None and defaults.greedy),
        temperature=temperature or 1.0,
        top_k=defaults.top_k,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        repetition_penalty=defaults.repetition_penalty,
        max_new_tokens=budget or defaults.max_new_tokens,
        seed=defaults.seed if body.seed is None else body.seed,
    )


def _usage(request: GenerationRequest) -> dict[str, int]:
    prompt, completion = len(request.prompt_ids), len(request.token_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(
    engine: Engine,
    served: ServedModel,
    *,
    api_keys: tuple[str, ...] = (),
    filters: tuple[InputFilter, ...] = (),
    request_log: RequestLog | None = None,
) -> FastAPI:
    """The API over a started-on-startup engine (uvicorn's lifespan starts and stops it)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()
        if request_log is not None:
            request_log.close()

    app = FastAPI(title="chatbaker serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.served = engine, served
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    created = int(time.time())

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, err: APIError) -> JSONResponse:
        return _error_response(err)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error_response(validation_error(err))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if err.status_code == 404 else None
        return _error_response(APIError(err.status_code, str(err.detail), code=kind))

    def require_key(request: Request) -> None:
        if not api_keys:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() not in api_keys:
            raise APIError(
                401,
                "missing or incorrect API key: send `Authorization: Bearer <key>` "
                "with a key the server was started with (--api-key)",
                code="invalid_api_key",
            )

    def check_model(body: SamplingFields) -> None:
        if body.model != served.model_id:
            raise APIError(
                404,
                f"model {body.model!r} is not served here; GET /v1/models lists {served.model_id!r}",
                param="model",
                code="model_not_found",
            )

    def log_exchange(kind: str, request: Request, given: Any, **fields: Any) -> None:
        if request_log is not None:
            client = request.client.host if request.client else None
            request_log.write({"endpoint": kind, "client": client, "input": given, **fields})

    async def screen(kind: str, request: Request, texts: list[str], given: Any) -> None:
        """Run every filter on every text; refuse the request at the first objection."""
        for text in texts:
            for input_filter in filters:
                try:
                    reason = await run_in_threadpool(input_filter.check, text)
                except ModerationUnavailable as err:
                    raise APIError(
                        503, str(err), type="server_error", code="moderation_unavailable"
                    ) from None
                if reason is not None:
                    log.warning("refused an input: %s", reason)
                    log_exchange(kind, request, given, refused=reason)
                    raise APIError(
                        400,
                        f"Your message was not sent to the model: {reason}.",
                        param="messages" if kind == "chat" else "prompt",
                        code="content_filter",
                    )

    def start(prompt_ids: list[int], sampling: SamplingConfig, stops: tuple, field: str):
        if len(prompt_ids) >= served.max_length:
            raise APIError(
                400,
                f"the prompt has {len(prompt_ids)} tokens; the model attends over "
                f"{served.max_length}, so nothing can be generated: shorten the {field}",
                param=field,
                code="context_length_exceeded",
            )
        job = GenerationRequest(prompt_ids, sampling, *stops)
        job.loop, job.events = asyncio.get_running_loop(), asyncio.Queue()
        try:
            engine.submit(job)
        except QueueFull as err:
            raise APIError(
                429,
                f"the server is busy, retry later: {err}",
                type="rate_limit_error",
                code="rate_limit_exceeded",
            ) from None
        return job

    async def finish(job: GenerationRequest) -> None:
        try:
            async for _ in job.pieces():
                pass
        finally:
            engine.cancel(job)  # the client went away before the end
        if job.finish.reason not in ("stop", "length"):
            raise APIError(
                500,
                f"generation failed: {job.finish.error or job.finish.reason}",
                type="server_error",
            )

    def stream(
        job: GenerationRequest,
        chunk: Callable[[str | None, str | None], dict[str, Any]],
        include_usage: bool,
        done: Callable[[], None],
        opening: dict[str, Any] | None = None,
    ) -> StreamingResponse:
        """SSE of the job's text; a chat stream opens with the role chunk and trims the start."""

        async def events() -> AsyncIterator[str]:
            started = opening is None
            try:
                if opening is not None:
                    yield _sse(opening)
                async for piece in job.pieces():
                    if not started:
                        # Templates reply with " {content}": the reply starts at its first word.
                        piece = piece.lstrip()
                        started = bool(piece)
                    if piece:
                        yield _sse(chunk(piece, None))
                if job.finish.reason in ("stop", "length"):
                    yield _sse(chunk(None, job.finish.reason))
                    if include_usage:
                        yield _sse({**chunk(None, None), "choices": [], "usage": _usage(job)})
                else:
                    error = APIError(
                        500, f"generation failed: {job.finish.error}", type="server_error"
                    )
                    yield _sse(error.body)
                yield "data: [DONE]\n\n"
                done()
            finally:
                engine.cancel(job)  # a client that disconnects frees its row at once

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/")
    async def page() -> FileResponse:
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            raise APIError(404, f"{index}: the web page is not installed", code="not_found")
        return FileResponse(index)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served.model_id, **engine.state()}

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": served.model_id,
                    "object": "model",
                    "created": created,
                    "owned_by": "chatbaker",
                }
            ],
        }

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body)
        given = [m.model_dump() for m in body.messages]
        await screen(
            "chat", request, [m.text() for m in body.messages if m.role != "assistant"], given
        )
        messages = [Message(m.role, m.text()) for m in body.messages]
        if served.system is not None and messages[0].role != "system":
            messages = [Message("system", served.system), *messages]
        try:
            prompt_ids = encode_prompt(served.tokenizer, served.template, messages)
        except ValueError as err:
            raise APIError(400, f"messages: {err}", param="messages") from None
        sampling = _sampling(body, body.max_completion_tokens or body.max_tokens, served.defaults)
        stops = (served.turn_stop_ids, served.turn_stop_strings + body.stop_strings())
        job = start(prompt_ids, sampling, stops, "messages")
        ident, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": ident, "created": now, "model": served.model_id}

        def logged() -> None:
            log_exchange(
                "chat",
                request,
                given,
                output=job.text.lstrip(),
                usage=_usage(job),
                finish_reason=job.finish.reason,
            )

        if body.stream:

            def chunk(piece: str | None, reason: str | None) -> dict[str, Any]:
                delta = {} if piece is None else {"content": piece}
                return {
                    **head,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
                }

            include = bool(body.stream_options and body.stream_options.include_usage)
            opening = chunk(None, None)
            opening["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            return stream(job, chunk, include, logged, opening)
        await finish(job)
        logged()
        return {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": job.text.lstrip()},
                    "finish_reason": job.finish.reason,
                }
            ],
            "usage": _usage(job),
        }

    @app.post("/v1/completions", dependencies=[Depends(require_key)])
    async def completions(body: CompletionRequest, request: Request):
        check_model(body)
        await screen("completion", request, [body.prompt], body.prompt)
        sampling = _sampling(body, body.max_tokens, served.defaults)
        job = start(
            served.tokenizer.encode(body.prompt), sampling, ((), body.stop_strings()), "prompt"
        )
        ident, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": ident, "created": now, "model": served.model_id, "object": "text_completion"}

        def logged() -> None:
            log_exchange(
                "completion",
                request,
                body.prompt,
                output=job.text,
                usage=_usage(job),
                finish_reason=job.finish.reason,
            )

        def choice(text: str, reason: str | None) -> dict[str, Any]:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}

        if body.stream:

            def chunk(piece: str | None, reason: str | None) -> dict[str, Any]:
                return {**head, "choices": [choice(piece or "", reason)]}

            include = bool(body.stream_options and body.stream_options.include_usage)
            return stream(job, chunk, include, logged)
        await finish(job)
        logged()
        return {**head, "choices": [choice(job.text, job.finish.reason)], "usage": _usage(job)}

    return app
