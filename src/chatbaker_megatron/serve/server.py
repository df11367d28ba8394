"""The server's state, one `Server` on `app.state.server`, and the dependencies the routes take.

A route reaches the state through `get_server` (or the `ServerDep` annotation),
never through a closure, so a test can call a route with a `Server` over a
fake engine, no uvicorn and no model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from chatbaker_megatron.data.templates import ChatTemplate
from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer
from chatbaker_megatron.inference.sampling import SamplingConfig
from chatbaker_megatron.serve.engine import RequestEngine
from chatbaker_megatron.serve.errors import APIError
from chatbaker_megatron.serve.limits import RateLimit
from chatbaker_megatron.serve.request_log import Exchange, RequestLog
from chatbaker_megatron.serve.schemas import SamplingFields
from chatbaker_megatron.serve.screening import Screening
from chatbaker_megatron.serve.upstream import Upstream


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


@dataclass
class Server:
    """What every route shares: the engine, the model it answers to, keys, limits, screening.

    `served` is None in front of an upstream engine (`engine` an Upstream), which
    knows its own tokenizer, template and context length.
    `rate_limit`: per API key (per client address on an open server).
    `moderate_output`: the filters also screen the upstream's replies."""

    engine: RequestEngine | Upstream
    model_id: str
    served: ServedModel | None = None
    api_keys: tuple[str, ...] = ()
    screening: Screening = field(default_factory=Screening)
    request_log: RequestLog | None = None
    rate_limit: RateLimit | None = None
    moderate_output: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        upstream = isinstance(self.engine, Upstream)
        if upstream == (self.served is not None):
            raise TypeError("Server: an engine goes with a ServedModel, an Upstream with none")
        if self.moderate_output and not upstream:
            raise ValueError("--moderate-output: only with --upstream")

    def start(self) -> None:
        if not isinstance(self.engine, Upstream):  # an upstream runs on its own
            self.engine.start()

    async def stop(self) -> None:
        if isinstance(self.engine, Upstream):
            await self.engine.aclose()
        else:
            self.engine.stop()
        if self.request_log is not None:
            self.request_log.close()

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "chatbaker",
        }

    def unknown_model(self, model: str) -> APIError:
        return APIError(
            404,
            f"model {model!r} is not served here; GET /v1/models lists {self.model_id!r}",
            param="model",
            code="model_not_found",
        )

    def check_request(self, body: SamplingFields) -> None:
        """The model exists, every field given is implemented, token ids are in the vocabulary."""
        if body.model != self.model_id:
            raise self.unknown_model(body.model)
        refused = body.refused_field()
        if refused is not None:
            name, reason = refused
            raise APIError(400, f"{name}: {reason}", param=name, code="unsupported_parameter")
        if self.served is None:
            return  # the upstream checks token ids against its own vocabulary
        vocab = self.served.tokenizer.vocab_size
        for token in body.logit_bias or {}:
            if int(token) >= vocab:
                raise APIError(
                    400,
                    f"logit_bias: token id {token} is not in the vocabulary (0..{vocab - 1})",
                    param="logit_bias",
                )

    def exchange(self, endpoint: str, request: Request, user: str | None, given: Any) -> Exchange:
        """The request as its request-log record will read."""
        client = request.client.host if request.client else None
        return Exchange(endpoint, given, client, user, self.request_log)

    def caller(self, request: Request) -> str:
        """Who is asking: their API key, or their address on an open server; 401 for a bad key."""
        if not self.api_keys:
            return request.client.host if request.client else ""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() not in self.api_keys:
            raise APIError(
                401,
                "missing or incorrect API key: send `Authorization: Bearer <key>` "
                "with a key the server was started with (--api-key)",
                code="invalid_api_key",
            )
        return key.strip()

    def take_turn(self, caller: str) -> None:
        """Count a generation request against the caller's rate limit; 429 when over it."""
        if self.rate_limit is None:
            return
        wait = self.rate_limit.take(caller)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise APIError(
                429,
                f"rate limit of {self.rate_limit.rate * 60:g} requests a minute per key reached "
                f"(--rate-limit): retry after {seconds} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(seconds)},
            )


def get_server(request: Request) -> Server:
    return request.app.state.server


ServerDep = Annotated[Server, Depends(get_server)]


def require_key(request: Request, server: ServerDep) -> str:
    return server.caller(request)


def limit_rate(server: ServerDep, caller: Annotated[str, Depends(require_key)]) -> None:
    server.take_turn(caller)
