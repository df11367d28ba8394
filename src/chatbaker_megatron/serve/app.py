"""The HTTP API: OpenAI's chat/completions, completions and models routes, /health, the page.

    GET  /                       the web chat page (static/index.html)
    GET  /favicon.ico            the page's icon
    GET  /static/<file>          the page's other files (serve/static/)
    GET  /health                 {"status": "ok", "model", "running", "waiting", counters}
    GET  /v1/models              the one model served
    GET  /v1/models/{id}         that model, or 404
    POST /v1/chat/completions    messages -> reply, streamed (SSE, ends `data: [DONE]`) or not
    POST /v1/completions         raw prompt(s) -> continuation, streamed or not

Every error is OpenAI's body {"error": {"message", "type", "param", "code"}}
(serve/errors.py): 400 for bad input (param names the field, e.g.
`messages[1].role`) and for a field the server does not implement, 400 with
code `content_filter` for an input the filter refused (the model never sees
it), 401 for a missing or wrong key (when the server has --api-key), 404 for
an unknown model, 413 for a body over --max-body-bytes, 429 when the engine
holds all it may or the key is over its --rate-limit (with Retry-After), 500
when generating this request failed, 503 when the moderation service cannot
be reached.

With `--upstream` the same routes, checks, screening, keys, rate limits and
request log stand in front of another OpenAI-compatible engine
(serve/upstream.py, which adds 502/503/504 for the upstream failing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
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
from chatbaker_megatron.serve.errors import APIError, error_response, validation_error
from chatbaker_megatron.serve.limits import DEFAULT_MAX_BODY_BYTES, BodyLimit, RateLimit
from chatbaker_megatron.serve.logprobs import chat_logprobs, completion_logprobs
from chatbaker_megatron.serve.moderation import ModerationUnavailable
from chatbaker_megatron.serve.request_log import RequestLog
from chatbaker_megatron.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
)
from chatbaker_megatron.serve.upstream import Relayed, Upstream

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger("chatbaker.serve")
ENDED = ("stop", "length")


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
    longest_token_bytes: int  # limits.longest_token_bytes: prompts too long to tokenise
    system: str | None = None


def _sampling(
    body: SamplingFields, budget: int | None, defaults: SamplingConfig, sample: int
) -> SamplingConfig:
    """The request's settings (the server's for fields it omits); sample i of n draws
    from seed + i."""
    temperature = defaults.temperature if body.temperature is None else body.temperature
    seed = defaults.seed if body.seed is None else body.seed
    if seed is not None and sample:
        seed = (seed + sample) % 2**64
    penalty = body.repetition_penalty
    return SamplingConfig(
        # OpenAI's temperature 0 means argmax.
        greedy=temperature == 0 or (body.temperature is None and defaults.greedy),
        temperature=temperature or 1.0,
        top_k=defaults.top_k,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        repetition_penalty=defaults.repetition_penalty if penalty is None else penalty,
        max_new_tokens=budget or defaults.max_new_tokens,
        seed=seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=tuple((int(t), b) for t, b in (body.logit_bias or {}).items()),
    )


def _usage(jobs: list[GenerationRequest]) -> dict[str, int]:
    # n samples of one prompt count its tokens once, as OpenAI does.
    prompt = sum(len(ids) for ids in {tuple(job.prompt_ids): 0 for job in jobs})
    completion = sum(len(job.token_ids) for job in jobs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _one_or_all(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else values


def create_app(
    engine: Engine | Upstream,
    served: ServedModel | str,
    *,
    api_keys: tuple[str, ...] = (),
    filters: tuple[InputFilter, ...] = (),
    request_log: RequestLog | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    rate_limit: RateLimit | None = None,
    moderate_output: bool = False,
) -> FastAPI:
    """The API over a started-on-startup engine (uvicorn's lifespan starts and stops it),
    or over an upstream engine; `served` is then only the model id the routes answer to.

    `rate_limit`: per API key (per client address on an open server).
    `moderate_output`: the filters also screen the upstream's replies."""
    upstream = engine if isinstance(engine, Upstream) else None
    local = served if isinstance(served, ServedModel) else None
    if (upstream is None) != (local is not None):
        raise TypeError("create_app: an Engine goes with a ServedModel, an Upstream with an id")
    if moderate_output and upstream is None:
        raise ValueError("--moderate-output: only with --upstream")
    model_id = served if isinstance(served, str) else served.model_id

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(engine, Engine):
            engine.start()
        yield
        if isinstance(engine, Engine):
            engine.stop()
        else:
            await engine.aclose()
        if request_log is not None:
            request_log.close()

    app = FastAPI(title="chatbaker serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.served, app.state.model_id = engine, served, model_id
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    created = int(time.time())
    vocab = local.tokenizer.vocab_size if local is not None else None

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, err: APIError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(err))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if err.status_code == 404 else None
        return error_response(APIError(err.status_code, str(err.detail), code=kind))

    def require_key(request: Request) -> str:
        """The caller: its API key, or its address on an open server."""
        if not api_keys:
            return request.client.host if request.client else ""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() not in api_keys:
            raise APIError(
                401,
                "missing or incorrect API key: send `Authorization: Bearer <key>` "
                "with a key the server was started with (--api-key)",
                code="invalid_api_key",
            )
        return key.strip()

    def limit_rate(caller: str = Depends(require_key)) -> None:
        wait = rate_limit.take(caller) if rate_limit is not None else None
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise APIError(
                429,
                f"rate limit of {rate_limit.rate * 60:g} requests a minute per key reached "
                f"(--rate-limit): retry after {seconds} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(seconds)},
            )

    def unknown_model(model: str) -> APIError:
        return APIError(
            404,
            f"model {model!r} is not served here; GET /v1/models lists {model_id!r}",
            param="model",
            code="model_not_found",
        )

    def check_request(body: SamplingFields) -> None:
        """The model exists, every field given is implemented, token ids are in the vocabulary."""
        if body.model != model_id:
            raise unknown_model(body.model)
        refused = body.refused_field()
        if refused is not None:
            field, reason = refused
            raise APIError(400, f"{field}: {reason}", param=field, code="unsupported_parameter")
        for token in body.logit_bias or {}:
            if vocab is not None and int(token) >= vocab:
                raise APIError(
                    400,
                    f"logit_bias: token id {token} is not in the vocabulary (0..{vocab - 1})",
                    param="logit_bias",
                )

    def log_exchange(kind: str, request: Request, given: Any, **fields: Any) -> None:
        if request_log is not None:
            client = request.client.host if request.client else None
            # OpenAI's `user`: the end user's id, for the operator's abuse monitoring.
            user = getattr(request.state, "user", None)
            who = {"client": client, **({"user": user} if user is not None else {})}
            request_log.write({"endpoint": kind, **who, "input": given, **fields})

    def log_jobs(
        kind: str, request: Request, given: Any, jobs: list[GenerationRequest], sent: list[str]
    ) -> None:
        """The exchange as it ended: what the client was sent, and why each reply ended."""
        reasons = [job.finish.reason if job.finish else "cancelled" for job in jobs]
        errors = [job.finish.error for job in jobs if job.finish and job.finish.error]
        extra = {"error": _one_or_all(errors)} if errors else {}
        log_exchange(
            kind,
            request,
            given,
            output=_one_or_all(sent),
            usage=_usage(jobs),
            finish_reason=_one_or_all(reasons),
            **extra,
        )

    async def objection(text: str) -> str | None:
        """The first filter's reason to refuse `text`, or None; 503 when moderation is down."""
        for input_filter in filters:
            try:
                reason = await run_in_threadpool(input_filter.check, text)
            except ModerationUnavailable as err:
                raise APIError(
                    503, str(err), type="server_error", code="moderation_unavailable"
                ) from None
            if reason is not None:
                return reason
        return None

    async def screen(kind: str, request: Request, texts: list[str], given: Any) -> None:
        """Run every filter on every text; refuse the request at the first objection."""
        for text in texts:
            reason = await objection(text)
            if reason is not None:
                log.warning("refused an input: %s", reason)
                log_exchange(kind, request, given, refused=reason)
                raise APIError(
                    400,
                    f"Your message was not sent to the model: {reason}.",
                    param="messages" if kind == "chat" else "prompt",
                    code="content_filter",
                )

    async def output_objection(text: str) -> str | None:
        """Output moderation: a reply the filters object to (or cannot judge) is cut."""
        try:
            return await objection(text)
        except APIError as err:
            return err.body["error"]["message"]

    async def forward(
        kind: str, body: ChatCompletionRequest | CompletionRequest, request: Request, given: Any
    ) -> Any:
        """The request as the upstream answers it, relayed (streamed chunk by chunk or not)."""
        assert upstream is not None
        chat = kind == "chat"
        path = "/chat/completions" if chat else "/completions"
        payload = body.model_dump(exclude_unset=True)
        screening = output_objection if moderate_output else None
        try:
            if body.stream:
                response, lines = await upstream.open_stream(path, payload)
            else:
                reply = await upstream.complete(path, payload, model_id)
        except APIError as err:
            log_exchange(kind, request, given, error=err.body["error"]["message"])
            raise
        if body.stream:
            sent = Relayed()

            def delta_text(chunk: dict[str, Any]) -> str:
                choice = (chunk.get("choices") or [{}])[0]
                piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                return piece or ""

            async def events() -> AsyncIterator[str]:
                try:
                    relay = upstream.relay(response, lines, model_id, delta_text, screening, sent)
                    async for event in relay:
                        yield event
                finally:
                    extra = {"error": sent.error} if sent.error else {}
                    log_exchange(
                        kind,
                        request,
                        given,
                        output=sent.text,
                        usage=sent.usage,
                        finish_reason=sent.finish_reason or "cancelled",
                        **extra,
                        **sent.extra,
                    )

            return StreamingResponse(events(), media_type="text/event-stream")
        texts, refused = [], {}
        for choice in reply["choices"]:
            text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
            reason = await screening(text) if screening is not None and text else None
            if reason is not None:
                refused[choice.get("index", 0)] = reason
                text, choice["finish_reason"] = "", "content_filter"
                choice["message" if chat else "text"] = (
                    {"role": "assistant", "content": ""} if chat else ""
                )
            texts.append(text or "")
        log_exchange(
            kind,
            request,
            given,
            output=_one_or_all(texts),
            usage=reply.get("usage"),
            finish_reason=_one_or_all([c.get("finish_reason") for c in reply["choices"]]),
            **({"refused_output": _one_or_all(list(refused.values()))} if refused else {}),
        )
        return reply

    def too_long(tokens: int, field: str, counted: str = "tokens") -> APIError:
        assert local is not None
        return APIError(
            400,
            f"the prompt has {tokens} {counted}; the model attends over "
            f"{local.max_length} tokens, so nothing can be generated: shorten the {field}",
            param=field,
            code="context_length_exceeded",
        )

    def check_chars(texts: list[str], field: str) -> None:
        """Refuse, without tokenising, a text that cannot fit the context in any tokenisation."""
        if local is None:
            return  # the upstream knows its own context length
        chars = sum(len(text) for text in texts)
        if chars > local.max_length * local.longest_token_bytes:
            raise too_long(chars, field, "characters")

    def submit(jobs: list[GenerationRequest], field: str) -> None:
        loop = asyncio.get_running_loop()
        for job in jobs:
            if local is not None and len(job.prompt_ids) >= local.max_length:
                raise too_long(len(job.prompt_ids), field)
            job.loop, job.events = loop, asyncio.Queue()
        try:
            engine.submit(*jobs)
        except QueueFull as err:
            raise APIError(
                429,
                f"the server is busy, retry later: {err}",
                type="rate_limit_error",
                code="rate_limit_exceeded",
            ) from None

    async def settle(jobs: list[GenerationRequest]) -> None:
        """Wait for every job to end; 500 with the first failure's own error."""

        async def drain(job: GenerationRequest) -> None:
            async for _ in job.pieces():
                pass

        try:
            await asyncio.gather(*(drain(job) for job in jobs))
        finally:
            for job in jobs:
                engine.cancel(job)  # the client went away before the end
        failed = [job.finish for job in jobs if job.finish.reason not in ENDED]
        if failed:
            raise APIError(
                500,
                f"generation failed: {failed[0].error or failed[0].reason}",
                type="server_error",
            )

    def stream(
        job: GenerationRequest,
        chunk: Callable[[str | None, str | None], dict[str, Any]],
        include_usage: bool,
        logged: Callable[[str], None],
        opening: dict[str, Any] | None = None,
    ) -> StreamingResponse:
        """SSE of the job's text; a chat stream opens with the role chunk and trims the start.

        The exchange is logged once, however it ends (done, failed, or the client gone),
        with the text the client was sent."""

        async def events() -> AsyncIterator[str]:
            started, sent = opening is None, ""
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
                        sent += piece
                if job.finish.reason in ENDED:
                    yield _sse(chunk(None, job.finish.reason))
                    if include_usage:
                        yield _sse({**chunk(None, None), "choices": [], "usage": _usage([job])})
                else:
                    error = APIError(
                        500, f"generation failed: {job.finish.error}", type="server_error"
                    )
                    yield _sse(error.body)
                yield "data: [DONE]\n\n"
            finally:
                engine.cancel(job)  # a client that disconnects frees its row at once
                logged(sent)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/")
    async def page() -> FileResponse:
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            raise APIError(404, f"{index}: the web page is not installed", code="not_found")
        return FileResponse(index)

    @app.get("/favicon.ico")
    async def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, **engine.state()}

    def model_card() -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": created,
            "owned_by": "chatbaker",
        }

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}", dependencies=[Depends(require_key)])
    async def model(model: str) -> dict[str, Any]:
        if model != model_id:
            raise unknown_model(model)
        return model_card()

    @app.post("/v1/chat/completions", dependencies=[Depends(limit_rate)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_request(body)
        request.state.user = body.user
        given = [m.model_dump(exclude_none=True) for m in body.messages]
        texts = [m.text() for m in body.messages]
        check_chars(texts, "messages")
        await screen(
            "chat", request, [m.text() for m in body.messages if m.role != "assistant"], given
        )
        if local is None:
            return await forward("chat", body, request, given)
        served = local
        messages = [Message(m.role, text) for m, text in zip(body.messages, texts)]
        if served.system is not None and messages[0].role != "system":
            messages = [Message("system", served.system), *messages]
        try:
            prompt_ids = await run_in_threadpool(
                encode_prompt, served.tokenizer, served.template, messages
            )
        except ValueError as err:
            raise APIError(400, f"messages: {err}", param="messages") from None
        budget = body.max_completion_tokens or body.max_tokens
        stops = (served.turn_stop_ids, served.turn_stop_strings + body.stop_strings())
        top = body.top_logprobs or 0
        jobs = [
            GenerationRequest(
                prompt_ids,
                _sampling(body, budget, served.defaults, i),
                *stops,
                logprobs=top if body.logprobs else None,
            )
            for i in range(body.n)
        ]
        submit(jobs, "messages")
        ident, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": ident, "created": now, "model": served.model_id}

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
            return stream(
                jobs[0],
                chunk,
                include,
                lambda sent: log_jobs("chat", request, given, jobs, [sent]),
                opening,
            )
        replies: list[str] = []
        try:
            await settle(jobs)
            replies = [job.text.lstrip() for job in jobs]
        finally:
            log_jobs("chat", request, given, jobs, replies or [""] * len(jobs))
        return {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": reply},
                    "logprobs": (
                        chat_logprobs(served.tokenizer, job.token_logprobs)
                        if body.logprobs
                        else None
                    ),
                    "finish_reason": job.finish.reason,
                }
                for i, (job, reply) in enumerate(zip(jobs, replies))
            ],
            "usage": _usage(jobs),
        }

    async def prompt_ids_of(prompt: str | list[int], index: int) -> list[int]:
        assert local is not None and vocab is not None
        if isinstance(prompt, str):
            return await run_in_threadpool(local.tokenizer.encode, prompt)
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise APIError(
                400,
                f"prompt[{index}]: token id {bad[0]} is not in the vocabulary (0..{vocab - 1})",
                param="prompt",
            )
        return list(prompt)

    @app.post("/v1/completions", dependencies=[Depends(limit_rate)])
    async def completions(body: CompletionRequest, request: Request):
        check_request(body)
        request.state.user = body.user
        given = body.prompt
        prompts = body.prompts_given()
        texts = [p for p in prompts if isinstance(p, str)]
        check_chars(texts, "prompt")
        await screen("completion", request, texts, body.prompt)
        if local is None:
            return await forward("completion", body, request, given)
        served = local
        given_ids = [await prompt_ids_of(p, i) for i, p in enumerate(prompts)]
        stops = ((), body.stop_strings())
        scoring = body.logprobs is not None
        jobs = [
            GenerationRequest(
                ids,
                _sampling(body, body.max_tokens, served.defaults, i),
                *stops,
                logprobs=body.logprobs,
                prompt_logprobs=body.echo and scoring,
            )
            for ids in given_ids
            for i in range(body.n)
        ]
        submit(jobs, "prompt")
        ident, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": ident, "created": now, "model": served.model_id, "object": "text_completion"}

        def choice(index: int, text: str, reason: str | None, logprobs: Any = None):
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

        if body.stream:

            def chunk(piece: str | None, reason: str | None) -> dict[str, Any]:
                return {**head, "choices": [choice(0, piece or "", reason)]}

            include = bool(body.stream_options and body.stream_options.include_usage)
            return stream(
                jobs[0],
                chunk,
                include,
                lambda sent: log_jobs("completion", request, given, jobs, [sent]),
            )
        replies: list[str] = []
        try:
            await settle(jobs)
            replies = [job.text for job in jobs]
        finally:
            log_jobs("completion", request, given, jobs, replies or [""] * len(jobs))
        choices = []
        for i, (job, reply) in enumerate(zip(jobs, replies)):
            tokens, scores = job.token_ids, list(job.token_logprobs)
            if body.echo:
                prompt = prompts[i // body.n]
                shown = prompt if isinstance(prompt, str) else served.tokenizer.decode(prompt)
                reply = shown + reply
                tokens, scores = job.prompt_ids + tokens, [*job.prompt_scores, *scores]
            logprobs = completion_logprobs(served.tokenizer, scores, tokens) if scoring else None
            choices.append(choice(i, reply, job.finish.reason, logprobs))
        return {**head, "choices": choices, "usage": _usage(jobs)}

    return app
