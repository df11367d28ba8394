"""The engine in its own process (serve/engine_process.py): the same replies as the engine in
a thread, field for field; a stop with requests in flight; a child that dies or cannot load."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest

from chatbaker_megatron.inference.sampling import SamplingConfig
from chatbaker_megatron.serve import cli
from chatbaker_megatron.serve.engine import EngineGone, EngineSettings, GenerationRequest
from chatbaker_megatron.serve.engine_process import EngineProcess
from tests.serve.conftest import API_KEY, serve_args
from tests.support.serving import free_port, running

HEADERS = {"Authorization": f"Bearer {API_KEY}"}

# Every field the child sends back: text, token counts, logprobs, the prompt's (echo),
# n > 1, a stop string, a seed.
REQUESTS = [
    ("completions", {"prompt": "대한민국의 수도는", "max_tokens": 12, "temperature": 0}),
    (
        "completions",
        {"prompt": "옛날 옛적에", "max_tokens": 8, "logprobs": 3, "echo": True, "temperature": 0},
    ),
    ("completions", {"prompt": "하나 둘", "max_tokens": 10, "n": 2, "seed": 5, "stop": ["다"]}),
    (
        "chat/completions",
        {
            "messages": [{"role": "user", "content": "안녕하세요?"}],
            "max_tokens": 10,
            "logprobs": True,
            "top_logprobs": 2,
            "seed": 7,
        },
    ),
]


def _answer(base_url: str, route: str, body: dict) -> dict:
    response = httpx2.post(
        f"{base_url}/v1/{route}", json={"model": "chatbaker-tiny", **body}, headers=HEADERS
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    for volatile in ("id", "created"):
        answer.pop(volatile)
    return answer


def test_the_process_engine_answers_as_the_thread_engine(served, served_in_thread):
    for route, body in REQUESTS:
        ours = _answer(served.base_url, route, body)
        assert ours == _answer(served_in_thread.base_url, route, body), (route, body)
    health = httpx2.get(f"{served.base_url}/health").json()
    assert health["running"] == health["waiting"] == 0 and health["completed"] >= len(REQUESTS)


def _long(seed: int) -> GenerationRequest:
    return GenerationRequest([5, 6, 7], SamplingConfig(max_new_tokens=400, seed=seed))


def test_a_stop_with_requests_in_flight_ends_each_and_the_child(served):
    engine = EngineProcess(EngineSettings(served.hf_dir, max_batch=2, max_queue=2))
    engine.start()
    jobs = [_long(seed) for seed in range(4)]  # two running, two waiting

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        for job in jobs:
            job.loop, job.events = loop, asyncio.Queue()
        engine.submit(*jobs)
        pieces = jobs[0].pieces()
        await anext(pieces)  # generating
        await asyncio.to_thread(engine.stop)
        for job in jobs:
            async for _ in job.pieces():
                pass

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [job.finish.reason for job in jobs] == ["cancelled"] * 4
    assert not engine.alive
    with pytest.raises(EngineGone):
        engine.submit(_long(9))


def test_a_killed_engine_fails_its_requests_and_the_server_answers_503(served):
    app = cli.build_app(serve_args(served.hf_dir))
    engine = app.state.server.engine
    with running(app) as base_url:
        body = {"model": "chatbaker-tiny", "prompt": "긴 대답", "max_tokens": 400, "stream": True}

        def stream() -> list[str]:
            with httpx2.stream("POST", f"{base_url}/v1/completions", json=body) as r:
                return list(r.iter_lines())

        os.kill(engine.pid, signal.SIGSTOP)  # what it is given cannot end before it dies
        with ThreadPoolExecutor(1) as pool:
            streamed = pool.submit(stream)
            deadline = time.monotonic() + 30
            while engine.state()["waiting"] + engine.state()["running"] == 0:
                assert time.monotonic() < deadline, "the request never reached the engine"
                time.sleep(0.01)
            os.kill(engine.pid, signal.SIGKILL)
            events = [line for line in streamed.result(timeout=60) if line]
        assert "the engine process ended (exit code -9)" in events[-2], events
        assert events[-1] == "data: [DONE]"
        assert engine.state()["failed"] == 1 and engine.state()["running"] == 0
        again = httpx2.post(f"{base_url}/v1/completions", json={**body, "stream": False})
        assert again.status_code == 503 and "the model is not running" in again.text
        assert httpx2.get(f"{base_url}/health").status_code == 200  # still serving


def test_an_engine_that_cannot_load_fails_at_start_in_one_line(served, tmp_path):
    broken = tmp_path / "hf"
    shutil.copytree(served.hf_dir, broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ValueError, match=f"{broken}: the engine could not start: ") as error:
        cli.build_app(serve_args(broken))
    assert "\n" not in str(error.value)


def _engine_of(pid: int) -> int:
    """The server's engine process (multiprocessing's resource tracker is a child too)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    (engine,) = [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]
    return engine


def _serve_process(hf_dir, log) -> tuple[subprocess.Popen, str]:
    """`chatbaker serve` as a user starts it, in a process group of its own."""
    port = free_port()
    command = [sys.executable, "-m", "chatbaker_megatron.cli", "serve", "--hf", str(hf_dir)]
    command += ["--port", str(port), "--threads", "1"]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, log.name
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server, f"http://127.0.0.1:{port}"
        assert time.monotonic() < deadline, "chatbaker serve did not start"
        time.sleep(0.2)


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return True
        if state == "Z":  # ended, not yet reaped
            return True
        time.sleep(0.1)
    return False


def test_ctrl_c_stops_the_server_and_its_engine_quietly(served, tmp_path):
    with open(tmp_path / "serve.log", "w") as log:
        server, _ = _serve_process(served.hf_dir, log)
        engine = _engine_of(server.pid)
        os.killpg(server.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
        assert server.wait(timeout=60) == 0
    said = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in said and "KeyboardInterrupt" not in said, said
    assert _gone(engine, 10)


def test_the_engine_ends_when_the_server_is_killed(served, tmp_path):
    with open(tmp_path / "serve.log", "w") as log:
        server, _ = _serve_process(served.hf_dir, log)
        engine = _engine_of(server.pid)
        server.kill()
        server.wait()
    assert _gone(engine, 30), "the engine process outlived its server"


def test_a_checkpoint_is_served_and_its_temporary_export_removed(
    served, layout_checkpoint, monkeypatch, tmp_path
):
    """--checkpoint: exported to a temporary HF folder that lasts until the engine's process
    has loaded it; the reply equals the one from the same weights served by folder."""
    _, checkpoints = layout_checkpoint("tp1_sft")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the export goes
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--checkpoint", str(checkpoints), "--model-name", "chatbaker-tiny"])
    app = cli.build_app(args)
    assert list(tmp_path.iterdir()) == [], "the temporary export outlived the engine's start"
    body = {"prompt": "대한민국의 수도는", "max_tokens": 12, "temperature": 0}
    with running(app) as base_url:
        response = httpx2.post(
            f"{base_url}/v1/completions", json={"model": "chatbaker-tiny", **body}
        )
    assert response.status_code == 200, response.text
    text = response.json()["choices"][0]["text"]
    assert text == _answer(served.base_url, "completions", body)["choices"][0]["text"]
