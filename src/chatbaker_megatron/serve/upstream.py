"""`chatbaker serve --upstream URL`: the routes' second backend, any OpenAI-compatible engine.

The request is validated, screened and rate-limited by the same routes as for
the built-in engine (serve/routes/openai.py); what is accepted is forwarded as given,
with `model` renamed to the upstream's, and the reply comes back with `model`
renamed to ours. A stream is relayed chunk by chunk as each arrives (and ends
with `data: [DONE]` even where the upstream omits it). The upstream failing is
OpenAI's error body: 503 `upstream_unavailable` when it cannot be reached
(connection refused) or says it is overloaded (429/503), 504
`upstream_timeout` when it does not answer within --upstream-timeout (per
chunk for a stream), 502 `upstream_error` for a 5xx or a reply that is not
OpenAI's; a 4xx of the upstream (a request it refuses) is passed through as
it was given.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx

from chatbaker_megatron.serve.errors import APIError


def _server_error(status: int, code: str, url: str, what: str) -> APIError:
    return APIError(status, f"the upstream engine at {url} {what}", type="server_error", code=code)


def _failure(url: str, err: Exception) -> APIError:
    """The error for the upstream not answering (or not in OpenAI's format)."""
    if isinstance(err, httpx.TimeoutException):
        what = f"did not answer in time ({type(err).__name__}, --upstream-timeout)"
        return _server_error(504, "upstream_timeout", url, what)
    if isinstance(err, httpx.TransportError):
        what = f"cannot be reached: {err or type(err).__name__}"
        return _server_error(503, "upstream_unavailable", url, what)
    return _server_error(502, "upstream_error", url, f"failed: {err}")


def _refusal(url: str, status: int, text: str) -> APIError:
    """The error for an upstream's non-200 answer."""
    if status in (429, 503):
        what = f"is overloaded (HTTP {status}), retry later"
        return _server_error(503, "upstream_unavailable", url, what)
    if 400 <= status < 500:
        try:
            error = json.loads(text)["error"]
            message = str(error.get("message") if isinstance(error, dict) else error)
        except (ValueError, KeyError, TypeError):
            message = text[:500]
        return APIError(status, f"the upstream engine refused the request: {message}")
    return _server_error(502, "upstream_error", url, f"failed (HTTP {status}): {text[:500]}")


@dataclass
class Relayed:
    """What the client was sent, for the request log."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Upstream:
    """An OpenAI-compatible engine at `url` (its base, `http://host:port/v1`)."""

    def __init__(
        self, url: str, model: str, api_key: str | None = None, timeout: float = 60.0
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"--upstream-timeout={timeout}: expected > 0")
        self.url = url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 5.0))
        self._headers = headers
        self._client: httpx.AsyncClient | None = None
        self.in_flight = 0
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0}

    @property
    def client(self) -> httpx.AsyncClient:
        # Made on first use, inside the server's event loop.
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.url, headers=self._headers, timeout=self._timeout
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def state(self) -> dict[str, Any]:
        return {"upstream": self.url, "running": self.in_flight, **self.counts}

    def _payload(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "model": self.model}

    async def complete(self, path: str, body: dict[str, Any], model_id: str) -> dict[str, Any]:
        """The upstream's JSON reply to a non-streamed request, `model` renamed to ours."""
        self.in_flight += 1
        try:
            try:
                response = await self.client.post(path, json=self._payload(body))
            except httpx.HTTPError as err:
                raise _failure(self.url, err) from None
            if response.status_code != 200:
                raise _refusal(self.url, response.status_code, response.text)
            try:
                reply = response.json()
            except ValueError as err:
                raise _failure(self.url, ValueError(f"a reply not in JSON ({err})")) from None
            if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list):
                raise _failure(self.url, ValueError("a reply without OpenAI's `choices`"))
            self.counts["completed"] += 1
            return {**reply, "model": model_id}
        except APIError:
            self.counts["failed"] += 1
            raise
        finally:
            self.in_flight -= 1

    async def open_stream(
        self, path: str, body: dict[str, Any]
    ) -> tuple[httpx.Response, AsyncIterator[str]]:
        """The upstream's streamed response, once its status is 200 (else the APIError)."""
        request = self.client.build_request("POST", path, json=self._payload(body))
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as err:
            self.counts["failed"] += 1
            raise _failure(self.url, err) from None
        if response.status_code != 200:
            text = (await response.aread()).decode("utf-8", "replace")
            await response.aclose()
            self.counts["failed"] += 1
            raise _refusal(self.url, response.status_code, text)
        return response, response.aiter_lines()

    async def relay(
        self,
        response: httpx.Response,
        lines: AsyncIterator[str],
        model_id: str,
        delta_text: Callable[[dict[str, Any]], str],
        screen_output: Callable[[str], Any] | None,
        sent: Relayed,
    ) -> AsyncIterator[str]:
        """SSE events for the client, one per upstream chunk as it arrives.

        `delta_text` reads a chunk's text; `screen_output(text so far)` (output
        moderation) returns a reason to stop the reply there (finish_reason
        `content_filter`), awaited before the chunk is sent."""
        self.in_flight += 1
        outcome = "cancelled"
        try:
            try:
                async for line in lines:
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise ValueError(f"the upstream's stream ended with {chunk['error']}")
                    chunk["model"] = model_id
                    for choice in chunk.get("choices") or []:
                        sent.finish_reason = choice.get("finish_reason") or sent.finish_reason
                    if chunk.get("usage"):
                        sent.usage = chunk["usage"]
                    piece = delta_text(chunk)
                    if piece and screen_output is not None:
                        reason = await screen_output(sent.text + piece)
                        if reason is not None:
                            sent.finish_reason, sent.extra["refused_output"] = (
                                "content_filter",
                                reason,
                            )
                            # The chunk's choice with its text taken out: delta {} or text "".
                            chat = "delta" in chunk["choices"][0]
                            last: dict[str, Any] = {
                                "index": 0,
                                **({"delta": {}} if chat else {"text": ""}),
                            }
                            end = {
                                **chunk,
                                "choices": [{**last, "finish_reason": "content_filter"}],
                            }
                            yield f"data: {json.dumps(end, ensure_ascii=False)}\n\n"
                            break
                    sent.text += piece
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
                outcome = "completed"
            except (httpx.HTTPError, ValueError) as err:
                outcome = "failed"
                error = err if isinstance(err, httpx.HTTPError) else RuntimeError(err)
                failure = _failure(self.url, error)
                sent.error = failure.body["error"]["message"]
                yield f"data: {json.dumps(failure.body, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.in_flight -= 1
            self.counts[outcome] += 1
            await response.aclose()


def upstream_model(url: str, api_key: str | None = None, timeout: float = 10.0) -> str:
    """The first model the upstream's GET /models lists (for when --upstream-model is not given)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/models", headers=headers, timeout=timeout)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as err:
        raise ValueError(
            f"--upstream {url}: cannot list its models ({err}); is it running? "
            "(or name the model with --upstream-model)"
        ) from None
