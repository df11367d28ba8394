"""Back-pressure and disconnects: a full queue answers 429, a client that leaves frees its row."""

from __future__ import annotations

import time

import httpx2
import pytest

from chatbaker_megatron.serve.cli import build_app
from tests.serve.conftest import serve_args
from tests.support.serving import running

LONG = 400  # tokens: far more than the test reads before leaving


def _stream(client: httpx2.Client, model: str):
    return client.stream(
        "POST",
        "/v1/completions",
        json={"model": model, "prompt": "옛날 옛적에", "max_tokens": LONG, "stream": True},
    )


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def small_server(served):
    """One row and one queue place, so the third concurrent request is refused."""
    app = build_app(serve_args(served.hf_dir, "--max-batch", "1", "--max-queue", "1", "--greedy"))
    with running(app) as base_url:
        yield app, base_url


def test_full_queue_gets_429_and_a_disconnect_frees_the_row(served, small_server):
    app, base_url = small_server
    engine = app.state.server.engine
    with (
        httpx2.Client(base_url=base_url, timeout=30) as first,
        httpx2.Client(base_url=base_url, timeout=30) as second,
        _stream(first, served.model_id) as running_one,
    ):
        assert running_one.status_code == 200
        lines = running_one.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        with _stream(second, served.model_id) as waiting_one:
            assert waiting_one.status_code == 200
            assert engine.state()["waiting"] == 1 and engine.state()["running"] == 1
            refused = httpx2.post(
                f"{base_url}/v1/completions",
                json={"model": served.model_id, "prompt": "가", "max_tokens": 2},
            )
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            # The first client leaves mid-stream: its row goes to the waiting one.
            running_one.close()
            _wait_for(
                lambda: engine.state()["cancelled"] == 1 and engine.state()["waiting"] == 0,
                "the row was freed and given to the waiting request",
            )
            tail = [line for line in waiting_one.iter_lines() if line.startswith("data: ")]
            assert tail[-1] == "data: [DONE]"
    state = engine.state()
    assert state["running"] == 0 and state["waiting"] == 0
    assert state["completed"] == 1 and state["cancelled"] == 1
    # The cancelled request stopped early: far fewer tokens than its budget were generated.
    assert state["generated_tokens"] < 2 * LONG
