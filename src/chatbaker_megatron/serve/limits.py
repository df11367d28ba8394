"""Request size limits, applied before anything reads, parses or tokenises a request.

`BodyLimit` is ASGI middleware: a body whose Content-Length exceeds the limit
is answered 413 at once, unread; a body sent without a length (chunked) is
counted as it arrives and refused the moment it passes the limit. Neither
touches the engine, so an oversized request never delays anyone's stream.
(FastAPI's own `max_body_size` answers a Content-Length overrun with a
plain-text "Content Too Large", not OpenAI's error body that clients parse.)

`longest_token_bytes` bounds a prompt's length in characters from its length
in tokens: a text has no more characters than UTF-8 bytes, and no more bytes
than its tokens times the longest token's, so a prompt of more than
`max_length * longest` characters cannot fit the context whatever it says, and
is refused without tokenising it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer
from chatbaker_megatron.serve.logprobs import token_bytes

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: about 300k Korean characters
MAX_BUCKETS = 10_000  # rate-limit buckets kept before the full ones are forgotten


def _too_large(limit: int) -> bytes:
    message = (
        f"the request body is larger than this server's limit of {limit} bytes "
        "(--max-body-bytes): shorten the prompt"
    )
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None}}
    return json.dumps({**body, "error": {**body["error"], "code": "request_too_large"}}).encode()


class BodyLimit:
    """ASGI middleware: 413 for an HTTP request body over `limit` bytes."""

    def __init__(self, app: Any, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"--max-body-bytes={limit}: expected >= 1")
        self.app = app
        self.limit = limit

    async def _refuse(self, send: Any) -> None:
        body = _too_large(self.limit)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        seen, refused, started = 0, False, False

        async def counted() -> Any:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > self.limit and not started:
                    # Answered here; the app is told the client left and its reply dropped.
                    refused = True
                    await self._refuse(send)
            return {"type": "http.disconnect"} if refused else message

        async def watched(message: Any) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, watched)


def longest_token_bytes(tokenizer: ChatBakerTokenizer) -> int:
    """The most bytes any one token stands for."""
    return max(len(token_bytes(tokenizer, token)) for token in range(tokenizer.vocab_size))


class RateLimit:
    """Per-key token buckets: `per_minute` requests a minute, in bursts of up to `burst`.

    `take(key)` spends one token of that key's bucket: None when there was one,
    else the seconds until there is (for a 429's Retry-After)."""

    def __init__(self, per_minute: float, burst: int | None = None) -> None:
        if per_minute <= 0:
            raise ValueError(f"--rate-limit={per_minute}: expected > 0 requests a minute")
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(1, round(per_minute)))
        if self.burst < 1:
            raise ValueError(f"--rate-burst={burst}: expected >= 1")
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        if len(self._buckets) > MAX_BUCKETS:  # many client addresses: forget the full buckets
            full = self.burst / self.rate
            self._buckets = {k: b for k, b in self._buckets.items() if now - b[1] < full}
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        return None
