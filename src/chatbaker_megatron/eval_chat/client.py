"""Chat calls to an OpenAI-compatible endpoint with the `openai` client, retried with backoff.

The client's own retries are off so that every retry is counted here: a
reply of 429 or 5xx, a timeout or a refused connection is retried up to
`client.retries` times, waiting the server's Retry-After when it sends one,
else `backoff_s * 2**attempt` (at most `backoff_max_s`) with jitter. Other
errors (401, 404, 400) fail at once: retrying cannot help them.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import openai

from chatbaker_megatron.config.eval_chat import ClientConfig, EndpointConfig

RETRIED_STATUS = (408, 409, 429)


class CallFailed(RuntimeError):
    """A call that failed for good; the message names the endpoint and the last error."""


@dataclass
class CallCounts:
    """Requests sent, retries among them, and calls that failed for good (thread-safe)."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "retries": self.retries,
            "failures": self.failures,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


def _retry_after(err: openai.APIStatusError) -> float | None:
    value = err.response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _describe(err: Exception) -> str:
    if isinstance(err, openai.APIStatusError):
        return f"HTTP {err.status_code}"
    return type(err).__name__


def _retryable(err: Exception) -> bool:
    if isinstance(err, openai.APIConnectionError):  # includes timeouts
        return True
    return isinstance(err, openai.APIStatusError) and (
        err.status_code in RETRIED_STATUS or err.status_code >= 500
    )


class ChatClient:
    """One endpoint: `complete(messages, ...)` -> the reply's text."""

    def __init__(self, name: str, endpoint: EndpointConfig, client: ClientConfig) -> None:
        api_key = "none"
        if endpoint.api_key_env:
            api_key = os.environ.get(endpoint.api_key_env, "")
            if not api_key:
                raise CallFailed(
                    f"{name}: the environment variable {endpoint.api_key_env} "
                    "(api_key_env) is not set"
                )
        self.name = name
        self.endpoint = endpoint
        self.settings = client
        self.counts = CallCounts()
        self._client = openai.OpenAI(
            base_url=endpoint.base_url,
            api_key=api_key,
            max_retries=0,
            timeout=client.timeout_s,
        )

    def _backoff(self, attempt: int, err: Exception) -> float:
        if isinstance(err, openai.APIStatusError):
            waited = _retry_after(err)
            if waited is not None:
                return min(waited, self.settings.backoff_max_s)
        delay = min(self.settings.backoff_s * 2**attempt, self.settings.backoff_max_s)
        return delay * (0.5 + random.random() / 2)

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float | None,
        max_tokens: int,
    ) -> str:
        """The reply's text; CallFailed once the retries are spent or on a non-retryable error."""
        body: dict[str, Any] = {
            "model": self.endpoint.model,
            "messages": messages,
            "max_tokens": max_tokens,
        }
        if temperature is not None:
            body["temperature"] = temperature
        if self.endpoint.top_p is not None:
            body["top_p"] = self.endpoint.top_p
        if self.endpoint.seed is not None:
            body["seed"] = self.endpoint.seed
        extra = dict(self.endpoint.extra_body) or None
        attempt = 0
        while True:
            self.counts.add(requests=1, retries=1 if attempt else 0)
            try:
                reply = self._client.chat.completions.create(**body, extra_body=extra)
            except (openai.APIStatusError, openai.APIConnectionError) as err:
                if not _retryable(err) or attempt >= self.settings.retries:
                    self.counts.add(failures=1)
                    raise CallFailed(
                        f"{self.name} ({self.endpoint.base_url}, model {self.endpoint.model}): "
                        f"{type(err).__name__}: {err}"
                    ) from err
                delay = self._backoff(attempt, err)
                print(
                    f"{self.name}: {_describe(err)}; retry {attempt + 1}/{self.settings.retries} "
                    f"in {delay:.1f} s",
                    file=sys.stderr,
                )
                time.sleep(delay)
                attempt += 1
                continue
            if reply.usage is not None:
                self.counts.add(
                    prompt_tokens=reply.usage.prompt_tokens or 0,
                    completion_tokens=reply.usage.completion_tokens or 0,
                )
            return reply.choices[0].message.content or ""
