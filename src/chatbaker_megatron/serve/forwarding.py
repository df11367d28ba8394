"""The `--upstream` side of the generation routes: a checked, screened request, relayed.

The request goes to the upstream engine with the fields it gave (serve/upstream.py
renames `model`); the reply comes back as the engine gave it, streamed chunk by
chunk or whole, each reply screened first under `--moderate-output` (a refused
one is emptied, finish_reason `content_filter`). The exchange is logged once,
however it ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from chatbaker_megatron.serve.errors import APIError
from chatbaker_megatron.serve.request_log import Exchange, one_or_all
from chatbaker_megatron.serve.schemas import ChatCompletionRequest, CompletionRequest
from chatbaker_megatron.serve.upstream import Relayed, Upstream

Objection = Callable[[str], Awaitable[str | None]]


async def forward(
    upstream: Upstream,
    model_id: str,
    body: ChatCompletionRequest | CompletionRequest,
    exchange: Exchange,
    screen_output: Objection | None = None,
) -> dict[str, Any] | StreamingResponse:
    """The request as the upstream answers it, `model` renamed to `model_id`.

    `screen_output(text)`: a reason to cut a reply (output moderation), or None."""
    chat = exchange.endpoint == "chat"
    path = "/chat/completions" if chat else "/completions"
    payload = body.model_dump(exclude_unset=True)
    try:
        if body.stream:
            response, lines = await upstream.open_stream(path, payload)
        else:
            reply = await upstream.complete(path, payload, model_id)
    except APIError as err:
        exchange.write(error=err.body["error"]["message"])
        raise
    if body.stream:
        sent = Relayed()

        def delta_text(chunk: dict[str, Any]) -> str:
            choice = (chunk.get("choices") or [{}])[0]
            piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            return piece or ""

        async def events() -> AsyncIterator[str]:
            try:
                relay = upstream.relay(response, lines, model_id, delta_text, screen_output, sent)
                async for event in relay:
                    yield event
            finally:
                exchange.write(
                    output=sent.text,
                    usage=sent.usage,
                    finish_reason=sent.finish_reason or "cancelled",
                    **({"error": sent.error} if sent.error else {}),
                    **sent.extra,
                )

        return StreamingResponse(events(), media_type="text/event-stream")
    texts, refused = [], {}
    for choice in reply["choices"]:
        text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        reason = await screen_output(text) if screen_output is not None and text else None
        if reason is not None:
            refused[choice.get("index", 0)] = reason
            text, choice["finish_reason"] = "", "content_filter"
            choice["message" if chat else "text"] = (
                {"role": "assistant", "content": ""} if chat else ""
            )
        texts.append(text or "")
    exchange.write(
        output=one_or_all(texts),
        usage=reply.get("usage"),
        finish_reason=one_or_all([c.get("finish_reason") for c in reply["choices"]]),
        **({"refused_output": one_or_all(list(refused.values()))} if refused else {}),
    )
    return reply
