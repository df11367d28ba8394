"""OpenAI's routes: the model list, chat completions and completions.

A generation request is checked (the model, the fields the server implements,
the prompt's length bound before tokenising), screened, then answered by the
built-in engine (serve/generate.py) or relayed to the upstream
(serve/forwarding.py). Every route needs the API key (when the server has
one); the two generation routes also count against the caller's rate limit.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from chatbaker_megatron.serve import generate
from chatbaker_megatron.serve.forwarding import forward
from chatbaker_megatron.serve.request_log import Exchange
from chatbaker_megatron.serve.schemas import ChatCompletionRequest, CompletionRequest
from chatbaker_megatron.serve.server import Server, ServerDep, limit_rate, require_key
from chatbaker_megatron.serve.upstream import Upstream

router = APIRouter(prefix="/v1")

Reply = dict[str, Any] | StreamingResponse


@router.get("/models", dependencies=[Depends(require_key)])
async def models(server: ServerDep) -> dict[str, Any]:
    return {"object": "list", "data": [server.model_card()]}


@router.get("/models/{model:path}", dependencies=[Depends(require_key)])
async def model(model: str, server: ServerDep) -> dict[str, Any]:
    if model != server.model_id:
        raise server.unknown_model(model)
    return server.model_card()


async def _answer(
    server: Server,
    body: ChatCompletionRequest | CompletionRequest,
    exchange: Exchange,
    texts: list[str],
    screened: list[str],
) -> Reply:
    """The reply to a checked request: `texts` within the length bound, `screened` screened."""
    if server.served is not None:  # the upstream knows its own context length
        generate.check_chars(server.served, texts, exchange.param)
    await server.screening.screen(screened, exchange)
    if isinstance(server.engine, Upstream):
        moderation = server.screening.output_objection if server.moderate_output else None
        return await forward(server.engine, server.model_id, body, exchange, moderation)
    assert server.served is not None  # an Engine goes with a ServedModel (Server.__post_init__)
    if isinstance(body, ChatCompletionRequest):
        return await generate.chat(server.engine, server.served, body, exchange)
    return await generate.complete(server.engine, server.served, body, exchange)


@router.post("/chat/completions", dependencies=[Depends(limit_rate)], response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, server: ServerDep
) -> Reply:
    server.check_request(body)
    given = [m.model_dump(exclude_none=True) for m in body.messages]
    exchange = server.exchange("chat", request, body.user, given)
    texts = [m.text() for m in body.messages]
    # Assistant turns are the model's own: only what the people wrote is screened.
    screened = [text for m, text in zip(body.messages, texts) if m.role != "assistant"]
    return await _answer(server, body, exchange, texts, screened)


@router.post("/completions", dependencies=[Depends(limit_rate)], response_model=None)
async def completions(body: CompletionRequest, request: Request, server: ServerDep) -> Reply:
    server.check_request(body)
    exchange = server.exchange("completion", request, body.user, body.prompt)
    texts = [p for p in body.prompts_given() if isinstance(p, str)]
    return await _answer(server, body, exchange, texts, texts)
