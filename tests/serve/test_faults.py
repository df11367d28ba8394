"""One bad request never hurts another: fault isolation in the engine, queue accounting,
size limits before the engine, the request log of cancelled and failed exchanges, and the
first SIGTERM stopping the server with a stream in flight."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from chatbaker_megatron.cli import main as cli_main
from chatbaker_megatron.inference.backends import HFBackend
from chatbaker_megatron.inference.sampling import SamplingConfig
from chatbaker_megatron.serve import cli
from chatbaker_megatron.serve import engine as engine_module
from chatbaker_megatron.serve.engine import Engine, GenerationRequest, QueueFull
from tests.serve.conftest import API_KEY, serve_args
from tests.support.serving import running

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


async def _run(engine: Engine, jobs: list[GenerationRequest]) -> list[str]:
    loop = asyncio.get_running_loop()
    for job in jobs:
        job.loop, job.events = loop, asyncio.Queue()
    engine.submit(*jobs)

    async def text(job: GenerationRequest) -> str:
        return "".join([piece async for piece in job.pieces()])

    return await asyncio.gather(*(text(job) for job in jobs))


def _good(prompt: list[int], seed: int) -> GenerationRequest:
    return GenerationRequest(prompt, SamplingConfig(temperature=1.0, max_new_tokens=24, seed=seed))


def test_a_request_failing_in_admission_prefill_or_sampling_fails_alone(served):
    engine = served.app.state.server.engine
    good = [[5, 6, 7, 8], [9, 10, 11]]
    alone = [asyncio.run(_run(engine, [_good(p, 3)]))[0] for p in good]
    failed_before = engine.state()["failed"]
    bad = [
        # What HTTP validation refuses, sent past it: a seed torch cannot take (admission),
        GenerationRequest([5, 6], SamplingConfig(seed=2**64)),
        # a token id past the embedding (prefill, batched with the good ones),
        GenerationRequest([5, 10**6], SamplingConfig()),
        # a bias on a token past the vocabulary (sampling).
        GenerationRequest([5, 6], SamplingConfig(logit_bias=((10**6, 1.0),))),
    ]
    jobs = [_good(good[0], 3), *bad, _good(good[1], 3)]
    texts = asyncio.run(_run(engine, jobs))
    assert [texts[0], texts[-1]] == alone, "a bad request changed another's reply"
    assert [jobs[0].finish.reason, jobs[-1].finish.reason] == ["length", "length"]
    errors = [job.finish for job in bad]
    assert [e.reason for e in errors] == ["error"] * 3
    assert "Overflow" in errors[0].error and "index" in errors[1].error.lower()
    assert engine.state()["failed"] == failed_before + 3
    assert engine.state()["running"] == engine.state()["waiting"] == 0


def test_the_queue_counts_what_the_engine_holds(served):
    backend = HFBackend(served.hf_dir)
    engine = Engine(backend.model, backend.tokenizer, 512, max_batch=2, max_queue=1)
    jobs = [_good([5, 6, 7], seed) for seed in range(6)]

    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        for job in jobs[:3]:  # two rows and one place in the queue, before the engine runs
            job.loop, job.events = loop, asyncio.Queue()
            engine.submit(job)
        with pytest.raises(QueueFull, match="0 requests running and 3 waiting"):
            engine.submit(jobs[3])
        with pytest.raises(QueueFull):
            engine.submit(*jobs[3:5])  # all or none
        engine.start()
        for job in jobs[:3]:
            async for _ in job.pieces():
                pass
        return await _run(engine, jobs[3:])  # the three places are free again

    try:
        asyncio.run(scenario())
    finally:
        engine.stop()
    assert all(job.finish.reason in ("stop", "length") for job in jobs)
    assert engine.state()["running"] == engine.state()["waiting"] == 0


def test_six_simultaneous_requests_on_two_rows_and_one_queue_place(served):
    app = cli.build_app(serve_args(served.hf_dir, "--max-batch", "2", "--max-queue", "1"))
    with running(app) as base_url:
        body = {"model": served.model_id, "prompt": "가나다", "max_tokens": 48}
        barrier = threading.Barrier(6)

        def post(_: int) -> int:
            barrier.wait()
            return httpx2.post(f"{base_url}/v1/completions", json=body, timeout=60).status_code

        with ThreadPoolExecutor(6) as pool:
            codes = sorted(pool.map(post, range(6)))
        # Two rows and one waiting place hold three; only the others are refused.
        assert codes.count(200) >= 3 and codes.count(429) <= 3, codes
        assert app.state.server.engine.state()["completed"] == codes.count(200)


def test_oversized_bodies_and_prompts_are_refused_before_the_engine(served, monkeypatch):
    engine = served.app.state.server.engine
    generated = engine.state()["generated_tokens"]
    url = f"{served.base_url}/v1/completions"
    huge = {"model": served.model_id, "prompt": "가" * (3 << 20), "max_tokens": 2}
    response = httpx2.post(url, json=huge, headers=HEADERS)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        data = json.dumps(huge).encode()
        for start in range(0, len(data), 1 << 16):
            yield data[start : start + (1 << 16)]

    response = httpx2.post(
        url, content=chunks(), headers={**HEADERS, "Content-Type": "application/json"}
    )
    assert response.status_code == 413

    def never(text: str) -> list[int]:
        raise AssertionError("a prompt that cannot fit was tokenised")

    monkeypatch.setattr(served.app.state.server.served.tokenizer, "encode", never)
    served_model = served.app.state.server.served
    long = "가" * (served_model.max_length * served_model.longest_token_bytes + 1)
    response = httpx2.post(url, json={**huge, "prompt": long}, headers=HEADERS)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and "characters" in error["message"]
    assert engine.state()["generated_tokens"] == generated


def _log_lines(served) -> list[dict]:
    return [json.loads(line) for line in served.request_log.read_text("utf-8").splitlines()]


def test_request_log_has_cancelled_and_failed_exchanges_as_sent(served_in_thread, monkeypatch):
    served = served_in_thread  # the fault is injected into this process's engine
    url = f"{served.base_url}/v1/completions"
    ask = {"model": served.model_id, "max_tokens": 200, "temperature": 0, "stream": True}
    # Cancelled: the client reads a few events and goes away.
    with httpx2.stream("POST", url, json={**ask, "prompt": "취소할 질문"}, headers=HEADERS) as r:
        received = ""
        for line in r.iter_lines():
            if line.startswith("data: {"):
                received += json.loads(line[6:])["choices"][0]["text"]
                if len(received) > 3:
                    break
    # Failed: sampling raises for this request once it has streamed some tokens.
    real = engine_module.next_tokens

    def failing(logits, contexts, configs, generators, generated):
        if any(c.seed == 4242 and len(out) >= 6 for c, out in zip(configs, generated)):
            raise RuntimeError("injected sampling fault")
        return real(logits, contexts, configs, generators, generated)

    monkeypatch.setattr(engine_module, "next_tokens", failing)
    events = []
    failing_ask = {
        **ask,
        "prompt": "실패할 질문",
        "seed": 4242,
        "temperature": 1.0,
        "user": "user-7",
    }
    with httpx2.stream("POST", url, json=failing_ask, headers=HEADERS) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    streamed = "".join(e["choices"][0]["text"] for e in events if "choices" in e)
    assert streamed and "injected sampling fault" in events[-1]["error"]["message"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = {json.dumps(line["input"], ensure_ascii=False): line for line in _log_lines(served)}
        if '"취소할 질문"' in lines and '"실패할 질문"' in lines:
            break
        time.sleep(0.05)
    cancelled, failed = lines['"취소할 질문"'], lines['"실패할 질문"']
    assert cancelled["finish_reason"] == "cancelled" and cancelled["output"].startswith(received)
    assert failed["finish_reason"] == "error" and failed["output"] == streamed
    assert "injected sampling fault" in failed["error"] and failed["user"] == "user-7"


def test_the_first_sigterm_stops_the_server_with_a_stream_in_flight(served):
    # In a thread, to slow its steps down (test_engine_process.py stops the process's).
    app = cli.build_app(serve_args(served.hf_dir, "--engine", "thread"))
    decoder = app.state.server.engine.decoder
    step = decoder.step

    def slow_step(tokens):  # 480 tokens take half a minute
        time.sleep(0.06)
        return step(tokens)

    decoder.step = slow_step
    first = threading.Event()
    with running(app, stop_within=15, timeout_graceful_shutdown=1) as base_url:

        def read() -> None:
            body = {
                "model": served.model_id,
                "prompt": "긴 대답",
                "max_tokens": 480,
                "stream": True,
            }
            try:
                with httpx2.stream("POST", f"{base_url}/v1/completions", json=body) as r:
                    for _ in r.iter_lines():
                        first.set()
            except httpx2.HTTPError:
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert first.wait(30)
    # Leaving `running` is uvicorn's SIGTERM; it raises if the server did not stop.
    assert app.state.server.engine.state()["running"] == 0


def test_the_banner_never_shows_the_key():
    text = cli.banner("http://127.0.0.1:8000", "demo", keyed=True)
    assert "$CHATBAKER_API_KEY" in text and API_KEY not in text
    assert "Authorization" not in cli.banner("http://127.0.0.1:8000", "demo", keyed=False)


def test_a_checkpoint_whose_tokenizer_is_missing_fails_in_one_line(layout_checkpoint, tmp_path):
    _, checkpoints = layout_checkpoint("tp1_sft")
    missing = tmp_path / "no-tokenizer"
    with pytest.raises(SystemExit) as caught:
        cli_main(["serve", "--checkpoint", str(checkpoints), "--tokenizer", str(missing)])
    message = str(caught.value.code)
    assert message.startswith("chatbaker serve: ") and "\n" not in message
    assert str(missing) in message
