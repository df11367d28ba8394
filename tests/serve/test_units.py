"""The server's units alone: screening, the route handlers over a fake engine, the upstream
relay over a fake upstream, and the wired app in-process. No uvicorn, no model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from chatbaker_megatron.data.templates import TEMPLATES
from chatbaker_megatron.inference.filters import BlocklistFilter
from chatbaker_megatron.inference.sampling import SamplingConfig
from chatbaker_megatron.serve.app import create_app
from chatbaker_megatron.serve.engine import Finished, GenerationRequest, QueueFull
from chatbaker_megatron.serve.errors import APIError
from chatbaker_megatron.serve.forwarding import forward
from chatbaker_megatron.serve.limits import RateLimit
from chatbaker_megatron.serve.moderation import ModerationUnavailable
from chatbaker_megatron.serve.request_log import Exchange, RequestLog
from chatbaker_megatron.serve.routes import openai
from chatbaker_megatron.serve.schemas import ChatCompletionRequest, CompletionRequest
from chatbaker_megatron.serve.screening import Screening
from chatbaker_megatron.serve.server import ServedModel, Server
from chatbaker_megatron.serve.upstream import Upstream

MODEL = "unit-model"
BLOCKED = "금지어"
STOPPED = Finished("stop")


class ByteTokenizer:
    """A tokenizer whose tokens are the UTF-8 bytes: enough for encode_prompt and the routes."""

    vocab_size = 256
    bos_token, eos_token = "<s>", "</s>"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", "replace")


class FakeEngine:
    """The engine's interface to the routes (submit, cancel, state), answering every request
    at once with `reply` and `finish`; `full` refuses every submission as the queue does."""

    def __init__(
        self, reply: str = " 안녕하세요", finish: Finished = STOPPED, full: bool = False
    ) -> None:
        self.reply, self.finish, self.full = reply, finish, full
        self.submitted: list[GenerationRequest] = []
        self.cancelled: list[GenerationRequest] = []

    def submit(self, *jobs: GenerationRequest) -> None:
        if self.full:
            raise QueueFull("2 requests running and 0 waiting")
        for job in jobs:
            self.submitted.append(job)
            job.text, job.token_ids, job.finish = self.reply, [7] * 3, self.finish
            job.events.put_nowait(self.reply)
            job.events.put_nowait(self.finish)

    def cancel(self, job: GenerationRequest) -> None:
        self.cancelled.append(job)

    def state(self) -> dict[str, int]:
        return {"running": 0, "completed": len(self.submitted)}


def local_server(engine: FakeEngine, log: RequestLog | None = None, **fields: Any) -> Server:
    served = ServedModel(
        model_id=MODEL,
        tokenizer=ByteTokenizer(),
        template=TEMPLATES["chatbaker"],
        max_length=64,
        defaults=SamplingConfig(temperature=0.7, seed=5, max_new_tokens=16),
        turn_stop_ids=(),
        turn_stop_strings=("<human>:",),
        longest_token_bytes=4,
        system="짧게 답하세요.",
    )
    return Server(engine, MODEL, served, request_log=log, **fields)


def http_request(client: str = "10.0.0.7") -> Request:
    return Request({"type": "http", "client": (client, 5000), "headers": []})


def records(log: RequestLog) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.path.read_text("utf-8").splitlines()]


class Recording:
    """An input filter that records what it was asked, objecting to `word` or failing on `down`."""

    def __init__(self, word: str | None = None) -> None:
        self.word, self.seen = word, []

    def check(self, text: str) -> str | None:
        self.seen.append(text)
        if text == "down":
            raise ModerationUnavailable("the moderation service did not answer")
        return f"it says {self.word}" if self.word and self.word in text else None


def test_screening_refuses_at_the_first_objection_and_logs_it(tmp_path: Path):
    first, second = Recording("bad"), Recording()
    screening = Screening((first, second))
    log = RequestLog(tmp_path / "log.jsonl")
    exchange = Exchange("completion", ["fine", "bad one", "never read"], "1.2.3.4", "u1", log)
    with pytest.raises(APIError) as caught:
        asyncio.run(screening.screen(["fine", "bad one", "never read"], exchange))
    error = caught.value.body["error"]
    assert caught.value.status == 400 and error["code"] == "content_filter"
    assert error["param"] == "prompt" and error["message"].endswith("it says bad.")
    assert first.seen == ["fine", "bad one"] and second.seen == ["fine"]
    [record] = records(log)
    assert record["refused"] == "it says bad" and record["user"] == "u1"
    assert record["endpoint"] == "completion" and record["client"] == "1.2.3.4"


def test_screening_fails_closed_when_moderation_is_down():
    screening = Screening((Recording(),))
    with pytest.raises(APIError) as caught:
        asyncio.run(screening.objection("down"))
    assert caught.value.status == 503
    assert caught.value.body["error"]["code"] == "moderation_unavailable"
    # On a reply (output moderation) a verdict that cannot be had cuts the reply.
    assert "did not answer" in asyncio.run(screening.output_objection("down"))
    assert asyncio.run(screening.output_objection("fine")) is None


def test_chat_handler_over_a_fake_engine(tmp_path: Path):
    engine = FakeEngine()
    log = RequestLog(tmp_path / "log.jsonl")
    server = local_server(engine, log, screening=Screening((BlocklistFilter((BLOCKED,)),)))
    messages = [{"role": "user", "content": "안녕?"}]
    body = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": messages, "n": 2, "seed": 11, "user": "u2"}
    )
    reply = asyncio.run(openai.chat_completions(body, http_request(), server))
    assert [c["message"]["content"] for c in reply["choices"]] == ["안녕하세요"] * 2
    prompt = ByteTokenizer().decode(engine.submitted[0].prompt_ids)
    assert prompt.startswith("짧게 답하세요.\n<human>: 안녕? ") and prompt.endswith("<bot>:")
    assert [job.sampling.seed for job in engine.submitted] == [11, 12]
    assert engine.submitted[0].sampling.temperature == 0.7  # the server's, not given
    assert engine.submitted[0].stop_strings == ("<human>:",)
    prompt_tokens = len(prompt.encode())
    assert reply["usage"] == {
        "prompt_tokens": prompt_tokens,  # counted once for the n samples
        "completion_tokens": 6,
        "total_tokens": prompt_tokens + 6,
    }
    assert engine.cancelled == engine.submitted  # every row is freed once answered
    [record] = records(log)
    assert record["output"] == ["안녕하세요"] * 2 and record["finish_reason"] == ["stop"] * 2
    assert record["user"] == "u2" and record["client"] == "10.0.0.7"

    refused = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": f"{BLOCKED} 알려줘"}]}
    )
    with pytest.raises(APIError, match="blocklist"):
        asyncio.run(openai.chat_completions(refused, http_request(), server))
    assert len(engine.submitted) == 2, "a refused input reached the engine"


def test_chat_stream_opens_with_the_role_and_trims_the_reply(tmp_path: Path):
    engine = FakeEngine(finish=Finished("length"))
    log = RequestLog(tmp_path / "log.jsonl")
    server = local_server(engine, log)
    body = ChatCompletionRequest.model_validate(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )

    async def events() -> list[str]:
        response = await openai.chat_completions(body, http_request(), server)
        return [event async for event in response.body_iterator]

    sent = asyncio.run(events())
    assert sent[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(event[6:]) for event in sent[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": "안녕하세요"}  # its space trimmed
    assert chunks[2]["choices"][0]["finish_reason"] == "length"
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["completion_tokens"] == 3
    assert engine.cancelled == engine.submitted
    assert records(log)[0]["output"] == "안녕하세요"


def test_completion_handler_refusals_and_failures(tmp_path: Path):
    log = RequestLog(tmp_path / "log.jsonl")

    def ask(engine: FakeEngine, **fields: Any) -> Any:
        body = CompletionRequest.model_validate({"model": MODEL, **fields})
        return asyncio.run(openai.completions(body, http_request(), local_server(engine, log)))

    engine = FakeEngine()
    reply = ask(engine, prompt=[[104, 105], [104, 105]], echo=True, n=2)
    assert [c["text"] for c in reply["choices"]] == ["hi 안녕하세요"] * 4
    assert reply["usage"]["prompt_tokens"] == 2, "one prompt's tokens are counted once"
    with pytest.raises(APIError, match=r"prompt\[1\]: token id 300"):
        ask(engine, prompt=[[1], [300]])
    with pytest.raises(APIError) as too_long:  # by its characters, before tokenising
        ask(engine, prompt="가" * (64 * 4 + 1))
    assert too_long.value.body["error"]["code"] == "context_length_exceeded"
    with pytest.raises(APIError) as busy:
        ask(FakeEngine(full=True), prompt="hi")
    assert busy.value.status == 429
    assert len(engine.submitted) == 4, "a refused request reached the engine"

    with pytest.raises(APIError) as failed:
        ask(FakeEngine(finish=Finished("error", "boom")), prompt="hi")
    assert failed.value.status == 500 and "boom" in str(failed.value)
    assert records(log)[-1]["error"] == "boom" and records(log)[-1]["output"] == ""


class FakeUpstream(Upstream):
    """An Upstream whose engine answers each request with the given reply or error."""

    def __init__(self, reply: dict[str, Any] | APIError) -> None:
        super().__init__("http://engine.invalid/v1", "their-model")
        self.reply, self.asked = reply, []

    async def complete(self, path: str, body: dict[str, Any], model_id: str) -> dict[str, Any]:
        self.asked.append((path, body))
        if isinstance(self.reply, APIError):
            raise self.reply
        return {**self.reply, "model": model_id}


def test_forward_relays_as_given_and_cuts_a_refused_reply(tmp_path: Path):
    log = RequestLog(tmp_path / "log.jsonl")
    leak, fine = f"여기 {BLOCKED}", "괜찮아요"
    choices = [
        {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        for i, text in enumerate([leak, fine])
    ]
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    upstream = FakeUpstream({"choices": choices, "usage": usage})
    body = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2}
    )
    exchange = Exchange("chat", "hi", log=log)
    moderation = Screening((BlocklistFilter((BLOCKED,)),)).output_objection
    reply = asyncio.run(forward(upstream, MODEL, body, exchange, moderation))
    assert upstream.asked == [("/chat/completions", body.model_dump(exclude_unset=True))]
    assert "temperature" not in upstream.asked[0][1], "a field the request left out was added"
    cut, kept = reply["choices"]
    assert cut["message"] == {"role": "assistant", "content": ""}
    assert cut["finish_reason"] == "content_filter"
    assert kept["message"]["content"] == fine and reply["model"] == MODEL
    [record] = records(log)
    assert record["output"] == ["", fine] and "blocklist" in record["refused_output"]
    assert record["finish_reason"] == ["content_filter", "stop"] and record["usage"] == usage

    down = FakeUpstream(APIError(503, "the upstream engine is overloaded"))
    with pytest.raises(APIError, match="overloaded"):
        asyncio.run(forward(down, MODEL, body, exchange))
    assert records(log)[-1]["error"] == "the upstream engine is overloaded"


def test_the_app_over_a_fake_engine_keys_limits_and_health():
    engine = FakeEngine()
    server = local_server(engine, api_keys=("k1",), rate_limit=RateLimit(60, burst=1))
    app = create_app(server, max_body_bytes=4096)
    client = TestClient(app)  # no `with`: the lifespan would start the engine
    assert client.get("/health").json() == {"status": "ok", "model": MODEL, **engine.state()}
    assert client.get("/v1/models").json()["error"]["code"] == "invalid_api_key"
    key = {"Authorization": "Bearer k1"}
    assert client.get("/v1/models", headers=key).json()["data"][0]["id"] == MODEL
    missing = client.get("/v1/models/other", headers=key)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
    ask = {"model": MODEL, "prompt": "hi"}
    assert client.post("/v1/completions", json=ask, headers=key).status_code == 200
    again = client.post("/v1/completions", json=ask, headers=key)
    assert again.status_code == 429 and again.headers["retry-after"] == "1"
    big = client.post("/v1/completions", json={**ask, "prompt": "x" * 5000}, headers=key)
    assert big.status_code == 413
    with pytest.raises(TypeError):
        Server(FakeUpstream({}), MODEL, server.served)
