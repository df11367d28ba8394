"""`chatbaker serve --upstream`: our routes in front of another OpenAI-compatible engine.

The real third-party engine is `transformers serve` on the tiny SFT model's
HF folder (started once for this module, without continuous batching so it
keeps no paged cache: a few hundred MB); its greedy text must equal our
built-in server's (`served`, repetition penalty 1.0 on both). The failures
(upstream 5xx, slow, unreachable), the relay's timing, the filter refusing
before any upstream call, output moderation and the per-key rate limit use a
fake upstream: a tiny FastAPI app.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from openai import OpenAI

from chatbaker_megatron.serve import cli
from chatbaker_megatron.serve.limits import RateLimit
from tests.serve.conftest import BLOCKED_WORD, MODEL_ID
from tests.support.serving import free_port, running

KEY = "upstream-key"
PROMPT = "안녕하세요"
QUESTION = "한국어로 대답해 주세요."
LEAK = f"여기 {BLOCKED_WORD} 있어요"  # what the fake upstream answers to "leak"
STREAM_GAP = 0.5  # seconds the fake upstream waits between its two stream chunks


def upstream_args(url: str, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(["--upstream", url, "--model-name", MODEL_ID, *extra])


@contextlib.contextmanager
def front(url: str, *extra: str) -> Iterator[str]:
    """`chatbaker serve --upstream url` with these options, in this process; its base URL."""
    with running(cli.build_app(upstream_args(url, "--api-key", KEY, *extra))) as base:
        yield base


def client(base: str) -> OpenAI:
    return OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)


def wait_until_up(process: subprocess.Popen, url: str, logged: Path, within: float = 90) -> None:
    deadline = time.monotonic() + within
    while True:
        if process.poll() is not None:
            said = logged.read_text(encoding="utf-8", errors="replace")[-2000:]
            pytest.fail(f"transformers serve exited: {said}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"transformers serve did not start within {within} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def engine(
    served_hf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """`transformers serve` on the tiny HF folder, starting: (its process, its base URL …/v1,
    its log). Its start (mostly importing) overlaps the built-in server's; `fronted` waits."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(served_hf)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # Its log goes to a file: a pipe nobody reads would stall it once full.
    logged = tmp_path_factory.mktemp("transformers-serve") / "log.txt"
    with logged.open("w") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield process, f"http://127.0.0.1:{port}/v1", logged
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def fronted(
    engine: tuple[subprocess.Popen, str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """Our server in front of `transformers serve`: (base URL, request log)."""
    process, url, logged = engine
    wait_until_up(process, url, logged)
    root = tmp_path_factory.mktemp("upstream")
    blocklist = root / "blocklist.txt"
    blocklist.write_text(f"{BLOCKED_WORD}\n", encoding="utf-8")
    log = root / "requests.jsonl"
    extra = ("--input-filter", f"blocklist:{blocklist}", "--request-log", str(log))
    with front(url, *extra) as base:
        yield base, log


def test_greedy_text_equals_builtin(engine, request):
    # Built while `transformers serve` starts (it spends ~10 s importing), not before it.
    served = request.getfixturevalue("served")
    fronted = request.getfixturevalue("fronted")
    ours = OpenAI(base_url=f"{served.base_url}/v1", api_key=served.api_key, max_retries=0)
    theirs = client(fronted[0])
    # Greedy, no repetition penalty on either: ours defaults to 1.0 (--repetition-penalty),
    # transformers serve takes the folder's generation_config.json (none), and refuses the field.
    greedy = {"model": MODEL_ID, "max_tokens": 12, "temperature": 0}
    built_in = ours.completions.create(prompt=PROMPT, **greedy)
    relayed = theirs.completions.create(prompt=PROMPT, **greedy)
    assert relayed.model == MODEL_ID
    assert relayed.choices[0].text == built_in.choices[0].text
    assert relayed.usage.completion_tokens == built_in.usage.completion_tokens == 12
    messages = [{"role": "user", "content": QUESTION}]
    built_in = ours.chat.completions.create(messages=messages, **greedy)
    relayed = theirs.chat.completions.create(messages=messages, **greedy)
    # Our template's reply begins " {content}": the built-in server trims that space.
    assert relayed.choices[0].message.content.lstrip() == built_in.choices[0].message.content
    # A field the engine does not take: its own 4xx and message come back.
    refused = httpx.post(
        f"{fronted[0]}/v1/completions",
        json={"model": MODEL_ID, "prompt": PROMPT, "repetition_penalty": 1.0},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert refused.status_code == 422 and "repetition_penalty" in refused.text


def test_stream_from_transformers_serve(fronted):
    base, log = fronted
    messages = [{"role": "user", "content": QUESTION}]
    greedy = {"model": MODEL_ID, "max_tokens": 8, "temperature": 0, "messages": messages}
    whole = client(base).chat.completions.create(**greedy).choices[0].message.content
    chunks = list(client(base).chat.completions.create(stream=True, **greedy))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta]
    assert len([p for p in pieces if p]) > 1
    assert "".join(p or "" for p in pieces) == whole
    assert {c.model for c in chunks} == {MODEL_ID}
    assert chunks[-1].choices[0].finish_reason == "length"
    record = json.loads(log.read_text(encoding="utf-8").splitlines()[-1])
    assert record["output"] == whole and record["finish_reason"] == "length"
    health = httpx.get(f"{base}/health").json()
    assert health["model"] == MODEL_ID and health["upstream"].endswith("/v1")
    assert httpx.get(f"{base}/").status_code == 200


def fake_upstream(calls: list[dict]) -> FastAPI:
    """An OpenAI-compatible engine whose last message says what to do: `fail` (500),
    `slow` (answers after 1.5 s), `busy` (503), `leak` (LEAK), anything else (echoed); streamed
    replies come in two chunks STREAM_GAP apart, without `data: [DONE]`."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "fake-engine", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        calls.append(body)
        said = body["messages"][-1]["content"]
        if said == "fail":
            return PlainTextResponse("Internal Server Error", status_code=500)
        if said == "busy":
            return PlainTextResponse("overloaded", status_code=503)
        if said == "slow":
            await asyncio.sleep(1.5)
        said = LEAK if said == "leak" else said
        head = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": said}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return {**head, "choices": [choice]}

        async def events():
            halves = [said[: len(said) // 2], said[len(said) // 2 :]]
            for i, half in enumerate(halves):
                choice = {"index": 0, "delta": {"content": half}, "finish_reason": None}
                if i:
                    await asyncio.sleep(STREAM_GAP)
                    choice["finish_reason"] = "stop"
                yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, list[dict]]]:
    calls: list[dict] = []
    with running(fake_upstream(calls)) as url:
        yield f"{url}/v1", calls


def say(base: str, text: str, **fields) -> httpx.Response:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": text}], **fields}
    headers = {"Authorization": f"Bearer {KEY}"}
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=10)


def test_failures_are_502_503_504(fake, tmp_path):
    url, calls = fake
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text(f"{BLOCKED_WORD}\n", encoding="utf-8")
    extra = ("--upstream-timeout", "0.5", "--input-filter", f"blocklist:{blocklist}")
    with front(url, *extra) as base:
        before = len(calls)
        refused = say(base, f"{BLOCKED_WORD} 알려줘")
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "content_filter"
        assert len(calls) == before  # the upstream never saw it
        assert say(base, "hello").json()["choices"][0]["message"]["content"] == "hello"
        assert calls[-1]["model"] == "fake-engine"  # the upstream's name for its model
        for text, status, code in [
            ("fail", 502, "upstream_error"),
            ("busy", 503, "upstream_unavailable"),
            ("slow", 504, "upstream_timeout"),
        ]:
            response = say(base, text)
            assert response.status_code == status, response.text
            assert response.json()["error"]["code"] == code
            assert response.json()["error"]["type"] == "server_error"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with front(dead, "--upstream-model", "any") as base:
        response = say(base, "hello")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "upstream_unavailable"


def test_stream_is_relayed_as_it_comes(fake):
    url, _ = fake
    with front(url) as base:
        arrived: list[tuple[float, str]] = []
        body = {
            "model": MODEL_ID,
            "stream": True,
            "messages": [{"role": "user", "content": "abcd"}],
        }
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    arrived.append((time.monotonic(), line[5:].strip()))
    assert arrived[-1][1] == "[DONE]"  # added: the fake upstream leaves it out
    contents = [json.loads(data)["choices"][0]["delta"]["content"] for _, data in arrived[:-1]]
    assert contents == ["ab", "cd"]
    # The first chunk reached the client before the upstream had sent the second.
    assert arrived[1][0] - arrived[0][0] >= STREAM_GAP * 0.8


def test_output_moderation(fake, tmp_path):
    url, _ = fake
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text(f"{BLOCKED_WORD}\n", encoding="utf-8")
    with front(url, "--input-filter", f"blocklist:{blocklist}", "--moderate-output") as base:
        assert say(base, "ok").json()["choices"][0]["message"]["content"] == "ok"
        cut = say(base, "leak").json()["choices"][0]
        assert cut["finish_reason"] == "content_filter" and cut["message"]["content"] == ""
        messages = [{"role": "user", "content": "leak"}]
        chunks = list(
            client(base).chat.completions.create(model=MODEL_ID, stream=True, messages=messages)
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert BLOCKED_WORD not in text
        assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_rate_limit_per_key(fake):
    url, _ = fake
    with front(url, "--rate-limit", "60", "--rate-burst", "2") as base:
        assert say(base, "a").status_code == 200
        assert say(base, "b").status_code == 200
        third = say(base, "c")
        assert third.status_code == 429
        assert third.headers["retry-after"] == "1"
        assert third.json()["error"]["code"] == "rate_limit_exceeded"
        time.sleep(1.05)
        assert say(base, "d").status_code == 200


def test_rate_limit_buckets_refill_per_key():
    limit = RateLimit(per_minute=30, burst=2)  # one request every 2 s, 2 at once
    assert limit.take("a", now=0) is None and limit.take("a", now=0) is None
    assert limit.take("a", now=0) == pytest.approx(2.0)
    assert limit.take("b", now=0) is None  # another key has its own bucket
    assert limit.take("a", now=1) == pytest.approx(1.0)
    assert limit.take("a", now=2.01) is None
    with pytest.raises(ValueError, match="--rate-limit"):
        RateLimit(per_minute=0)
