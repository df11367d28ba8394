"""The built-in engine's side of the generation routes: a checked, screened request -> reply.

`chat` and `complete` tokenise (in a worker thread, never on the event loop
that feeds the streams), build one GenerationRequest per sample, submit them
all or none (429 when the engine holds all it may), and answer with OpenAI's
body or an SSE stream; the exchange is logged once, however it ends.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from chatbaker_megatron.data.preprocess.sft_tokenize import encode_prompt
from chatbaker_megatron.data.templates import Message
from chatbaker_megatron.inference.sampling import SamplingConfig
from chatbaker_megatron.serve.engine import (
    EngineGone,
    Finished,
    GenerationRequest,
    QueueFull,
    RequestEngine,
)
from chatbaker_megatron.serve.errors import APIError
from chatbaker_megatron.serve.logprobs import TokenLogprob, chat_logprobs, completion_logprobs
from chatbaker_megatron.serve.request_log import Exchange, one_or_all
from chatbaker_megatron.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
)
from chatbaker_megatron.serve.server import ServedModel

ENDED = ("stop", "length")


def sampling_config(
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


def usage(jobs: list[GenerationRequest]) -> dict[str, int]:
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


def _log_jobs(exchange: Exchange, jobs: list[GenerationRequest], sent: list[str]) -> None:
    """The exchange as it ended: what the client was sent, and why each reply ended."""
    reasons = [job.finish.reason if job.finish else "cancelled" for job in jobs]
    errors = [job.finish.error for job in jobs if job.finish and job.finish.error]
    exchange.write(
        output=one_or_all(sent),
        usage=usage(jobs),
        finish_reason=one_or_all(reasons),
        **({"error": one_or_all(errors)} if errors else {}),
    )


def _ended(job: GenerationRequest) -> Finished:
    """How `job` ended, once its `pieces()` did (the engine sets it before the last event)."""
    assert job.finish is not None, "the job has not ended"
    return job.finish


def _too_long(served: ServedModel, tokens: int, param: str, counted: str = "tokens") -> APIError:
    return APIError(
        400,
        f"the prompt has {tokens} {counted}; the model attends over "
        f"{served.max_length} tokens, so nothing can be generated: shorten the {param}",
        param=param,
        code="context_length_exceeded",
    )


def check_chars(served: ServedModel, texts: list[str], param: str) -> None:
    """Refuse, without tokenising, a text that cannot fit the context in any tokenisation."""
    chars = sum(len(text) for text in texts)
    if chars > served.max_length * served.longest_token_bytes:
        raise _too_long(served, chars, param, "characters")


def _submit(
    engine: RequestEngine, served: ServedModel, jobs: list[GenerationRequest], param: str
) -> None:
    loop = asyncio.get_running_loop()
    for job in jobs:
        if len(job.prompt_ids) >= served.max_length:
            raise _too_long(served, len(job.prompt_ids), param)
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
    except EngineGone as err:
        raise APIError(503, f"the model is not running: {err}", type="server_error") from None


async def _settle(engine: RequestEngine, jobs: list[GenerationRequest]) -> None:
    """Wait for every job to end; 500 with the first failure's own error."""

    async def drain(job: GenerationRequest) -> None:
        async for _ in job.pieces():
            pass

    try:
        await asyncio.gather(*(drain(job) for job in jobs))
    finally:
        for job in jobs:
            engine.cancel(job)  # the client went away before the end
    failed = [end for end in map(_ended, jobs) if end.reason not in ENDED]
    if failed:
        raise APIError(
            500,
            f"generation failed: {failed[0].error or failed[0].reason}",
            type="server_error",
        )


async def _replies(
    engine: RequestEngine, jobs: list[GenerationRequest], exchange: Exchange, trim: bool
) -> list[str]:
    """Every job's whole reply, logged however it ends; `trim`: a chat reply's leading space."""
    replies: list[str] = []
    try:
        await _settle(engine, jobs)
        replies = [job.text.lstrip() if trim else job.text for job in jobs]
    finally:
        _log_jobs(exchange, jobs, replies or [""] * len(jobs))
    return replies


def _stream(
    engine: RequestEngine,
    jobs: list[GenerationRequest],
    chunk: Callable[[str | None, str | None], dict[str, Any]],
    body: SamplingFields,
    exchange: Exchange,
    opening: dict[str, Any] | None = None,
) -> StreamingResponse:
    """SSE of the (one) job's text; a chat stream opens with the role chunk and trims the start.

    The exchange is logged once, however it ends (done, failed, or the client gone),
    with the text the client was sent."""
    job = jobs[0]
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

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
            end = _ended(job)
            if end.reason in ENDED:
                yield _sse(chunk(None, end.reason))
                if include_usage:
                    yield _sse({**chunk(None, None), "choices": [], "usage": usage([job])})
            else:
                error = APIError(500, f"generation failed: {end.error}", type="server_error")
                yield _sse(error.body)
            yield "data: [DONE]\n\n"
        finally:
            engine.cancel(job)  # a client that disconnects frees its row at once
            _log_jobs(exchange, jobs, [sent])

    return StreamingResponse(events(), media_type="text/event-stream")


async def chat(
    engine: RequestEngine,
    served: ServedModel,
    body: ChatCompletionRequest,
    exchange: Exchange,
) -> dict[str, Any] | StreamingResponse:
    """The reply to a checked, screened chat request: `n` samples of the one conversation."""
    messages = [Message(m.role, m.text()) for m in body.messages]
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
            sampling_config(body, budget, served.defaults, i),
            *stops,
            logprobs=top if body.logprobs else None,
        )
        for i in range(body.n)
    ]
    _submit(engine, served, jobs, "messages")
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": served.model_id,
    }

    if body.stream:

        def chunk(piece: str | None, reason: str | None) -> dict[str, Any]:
            delta = {} if piece is None else {"content": piece}
            return {
                **head,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }

        opening = chunk(None, None)
        opening["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return _stream(engine, jobs, chunk, body, exchange, opening)
    replies = await _replies(engine, jobs, exchange, trim=True)
    return {
        **head,
        "object": "chat.completion",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": reply},
                "logprobs": (
                    chat_logprobs(served.tokenizer, job.token_logprobs) if body.logprobs else None
                ),
                "finish_reason": _ended(job).reason,
            }
            for i, (job, reply) in enumerate(zip(jobs, replies))
        ],
        "usage": usage(jobs),
    }


async def _prompt_ids(served: ServedModel, prompt: str | list[int], index: int) -> list[int]:
    if isinstance(prompt, str):
        return await run_in_threadpool(served.tokenizer.encode, prompt)
    vocab = served.tokenizer.vocab_size
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise APIError(
            400,
            f"prompt[{index}]: token id {bad[0]} is not in the vocabulary (0..{vocab - 1})",
            param="prompt",
        )
    return list(prompt)


async def complete(
    engine: RequestEngine, served: ServedModel, body: CompletionRequest, exchange: Exchange
) -> dict[str, Any] | StreamingResponse:
    """The reply to a checked, screened completion request: one choice per prompt and sample."""
    prompts = body.prompts_given()
    given_ids = [await _prompt_ids(served, p, i) for i, p in enumerate(prompts)]
    stops = ((), body.stop_strings())
    scoring = body.logprobs is not None
    jobs = [
        GenerationRequest(
            ids,
            sampling_config(body, body.max_tokens, served.defaults, i),
            *stops,
            logprobs=body.logprobs,
            prompt_logprobs=body.echo and scoring,
        )
        for ids in given_ids
        for i in range(body.n)
    ]
    _submit(engine, served, jobs, "prompt")
    head = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": served.model_id,
        "object": "text_completion",
    }

    def choice(index: int, text: str, reason: str | None, logprobs: Any = None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    if body.stream:

        def chunk(piece: str | None, reason: str | None) -> dict[str, Any]:
            return {**head, "choices": [choice(0, piece or "", reason)]}

        return _stream(engine, jobs, chunk, body, exchange)
    replies = await _replies(engine, jobs, exchange, trim=False)
    choices = []
    for i, (job, reply) in enumerate(zip(jobs, replies)):
        tokens = job.token_ids
        scores: list[TokenLogprob | None] = list(job.token_logprobs)
        if body.echo:
            prompt = prompts[i // body.n]
            shown = prompt if isinstance(prompt, str) else served.tokenizer.decode(prompt)
            reply = shown + reply
            tokens, scores = job.prompt_ids + tokens, [*job.prompt_scores, *scores]
        logprobs = completion_logprobs(served.tokenizer, scores, tokens) if scoring else None
        choices.append(choice(i, reply, _ended(job).reason, logprobs))
    return {**head, "choices": choices, "usage": usage(jobs)}
