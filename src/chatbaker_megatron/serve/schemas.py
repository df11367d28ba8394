"""The OpenAI request bodies the server accepts, as pydantic models (validation = 400s).

Types are strict as in OpenAI's API (`max_tokens: true`, `stream: "yes"` and
`seed: 1.5` are refused), ranges are OpenAI's, and a field the server does not
know is refused by name rather than ignored. Fields of OpenAI's API that the
server does not implement are declared here only to be refused by name
(`refused_field`), so a client never silently gets less than it asked for.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_N = 16
# torch.Generator seeds are 64-bit; OpenAI documents seed as a (64-bit) integer.
SEED_RANGE = (-(2**63), 2**64 - 1)


class FieldError(ValueError):
    """A check across fields failed; `field` names the one at fault (the 400's param)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    # What an OpenAI client sends back with a previous reply (`message.model_dump()`):
    # accepted when empty, refused otherwise (no names in the template, no tool calls).
    name: str | None = None
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: Any = None
    function_call: Any = None
    tool_calls: list[Any] | None = None

    @model_validator(mode="after")
    def _only_text(self) -> ChatMessage:
        for field in ("name", "refusal", "annotations", "audio", "function_call", "tool_calls"):
            if getattr(self, field) not in (None, []):
                raise FieldError(
                    "messages", f"a message's {field!r} is not implemented (text turns only)"
                )
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


# Field -> why it is refused when given (other than as its no-op value).
NOT_IMPLEMENTED = {
    "tools": "tool calling is not implemented",
    "tool_choice": "tool calling is not implemented",
    "functions": "function calling is not implemented",
    "function_call": "function calling is not implemented",
    "parallel_tool_calls": "tool calling is not implemented",
    "audio": "audio output is not implemented",
    "modalities": "only text output is implemented",
    "prediction": "predicted outputs are not implemented",
    "reasoning_effort": "the model has no reasoning settings",
    "web_search_options": "web search is not implemented",
    "suffix": "insertion (a suffix after the completion) is not implemented",
    "store": "stored completions are not implemented",
    "metadata": "stored completions are not implemented",
    "service_tier": "there are no service tiers",
}


class SamplingFields(_Strict):
    """What both endpoints share: the model, the token budget and the sampling settings."""

    model: str
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = Field(default=None)
    seed: StrictInt | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    n: StrictInt = Field(default=1, ge=1, le=MAX_N)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    # Token id (as a string, as JSON keys are) -> bias added to its logit.
    logit_bias: dict[str, float] | None = None
    # Not OpenAI's: CTRL's repetition penalty, as vLLM and TGI accept it (1.0 = off).
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    user: str | None = None
    # Declared only to be refused (NOT_IMPLEMENTED), unless given as their no-op value.
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    store: Any = None
    metadata: Any = None
    service_tier: Any = None

    @model_validator(mode="after")
    def _checks(self) -> SamplingFields:
        stops = self.stop_strings()
        if len(stops) > MAX_STOP_STRINGS:
            raise FieldError("stop", f"at most {MAX_STOP_STRINGS} stop strings (got {len(stops)})")
        for token, bias in (self.logit_bias or {}).items():
            if not token.isdigit():
                raise FieldError("logit_bias", f"keys are token ids (got {token!r})")
            if not -100 <= bias <= 100:
                raise FieldError("logit_bias", f"a bias is in [-100, 100] (got {bias} for {token})")
        return self

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def refused_field(self) -> tuple[str, str] | None:
        """(field, reason) of the first field given that the server does not implement."""
        no_op = {
            "store": False,
            "service_tier": "auto",
            "parallel_tool_calls": False,
            "modalities": ["text"],
        }
        for name in NOT_IMPLEMENTED:
            value = getattr(self, name, None)
            if value is not None and value != no_op.get(name, []):
                return name, NOT_IMPLEMENTED[name]
        if self.stream and self.n > 1:
            return "n", "n > 1 with stream is not implemented; ask without stream"
        return self._route_refusal()

    def _route_refusal(self) -> tuple[str, str] | None:
        """What the route's own fields ask for that is not implemented."""
        return None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    # The newer name of max_tokens in OpenAI's API; either may be sent.
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None

    def _route_refusal(self) -> tuple[str, str] | None:
        if self.response_format is not None and self.response_format.type != "text":
            kind = self.response_format.type
            return "response_format", f"{kind!r} is not implemented (only 'text')"
        if self.top_logprobs is not None and not self.logprobs:
            return "top_logprobs", "top_logprobs needs logprobs: true"
        if self.stream and self.logprobs:
            return "logprobs", "logprobs with stream is not implemented; ask without stream"
        return None


# A prompt as OpenAI takes it: text, texts, token ids, or lists of token ids.
Prompt = str | list[str] | list[StrictInt] | list[list[StrictInt]]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    echo: StrictBool = False
    logprobs: StrictInt | None = Field(default=None, ge=0, le=5)
    best_of: StrictInt | None = Field(default=None, ge=1)
    suffix: Any = None

    @model_validator(mode="after")
    def _prompt_given(self) -> CompletionRequest:
        if not self.prompt or any(not p for p in self.prompts_given()):
            raise FieldError("prompt", "an empty prompt (nothing to continue)")
        return self

    def prompts_given(self) -> list[str | list[int]]:
        """Each prompt of the request: a text or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(p, int) for p in prompt):
            return [prompt]  # type: ignore[list-item]
        return list(prompt)  # type: ignore[arg-type]

    def _route_refusal(self) -> tuple[str, str] | None:
        if self.best_of is not None and self.best_of != self.n:
            return "best_of", "best_of other than n is not implemented"
        if self.stream and (self.echo or self.logprobs is not None):
            field = "echo" if self.echo else "logprobs"
            return field, f"{field} with stream is not implemented; ask without stream"
        if self.stream and len(self.prompts_given()) > 1:
            return "prompt", "several prompts with stream is not implemented"
        return None
