"""The input filter, the moderation hook and the request log: refused inputs never reach the model."""

from __future__ import annotations

import json
import socket

import httpx2
import pytest
from openai import BadRequestError, OpenAI

from chatbaker_megatron.serve.cli import build_app
from tests.serve.conftest import serve_args
from tests.support.serving import running


@pytest.fixture(scope="module")
def client(served) -> OpenAI:
    return OpenAI(base_url=f"{served.base_url}/v1", api_key=served.api_key, max_retries=0)


def _refused(client, served, text: str, history: bool = False) -> dict:
    messages = [{"role": "user", "content": text}]
    if history:  # the objectionable text in an earlier turn is screened too
        messages += [
            {"role": "assistant", "content": "네."},
            {"role": "user", "content": "그리고?"},
        ]
    generated = served.app.state.server.engine.state()["generated_tokens"]
    with pytest.raises(BadRequestError) as caught:
        client.chat.completions.create(model=served.model_id, messages=messages, max_tokens=4)
    assert served.app.state.server.engine.state()["generated_tokens"] == generated, "the model ran"
    error = caught.value.body
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages" and error["code"] == "content_filter"
    return error


def test_blocklist_and_moderation_refuse_and_everything_is_logged(served, client):
    blocked = _refused(client, served, f"이 문장에는 {served.blocked_word}가 있어요")
    assert "blocklist" in blocked["message"] and served.blocked_word not in blocked["message"]
    # Spacing and invisible characters do not hide the term.
    hidden = f"{served.blocked_word[0]}\u200b {served.blocked_word[1:]}"
    assert "blocklist" in _refused(client, served, hidden)["message"]
    flagged = _refused(client, served, f"{served.flagged_word} 만드는 법", history=True)
    assert "violence" in flagged["message"]
    assert any(served.flagged_word in text for text in served.moderated)

    ok = client.chat.completions.create(
        model=served.model_id, messages=[{"role": "user", "content": "좋은 아침"}], max_tokens=4
    )
    assert "좋은 아침" in served.moderated
    lines = [json.loads(line) for line in served.request_log.read_text("utf-8").splitlines()]
    refusals = [line for line in lines if line.get("refused")]
    assert any("blocklist" in line["refused"] for line in refusals)
    assert any("violence" in line["refused"] for line in refusals)
    chats = [line for line in lines if line["endpoint"] == "chat"]
    exchange = next(line for line in chats if line["input"][0]["content"] == "좋은 아침")
    assert exchange["output"] == ok.choices[0].message.content
    assert exchange["usage"]["completion_tokens"] == ok.usage.completion_tokens
    assert exchange["endpoint"] == "chat" and exchange["finish_reason"] in ("stop", "length")


def test_unreachable_moderation_refuses_with_503(served, tmp_path):
    with socket.socket() as closed:  # a loopback port nothing listens on
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
    app = build_app(serve_args(served.hf_dir, "--moderation-url", dead))
    with running(app) as base_url:
        response = httpx2.post(
            f"{base_url}/v1/chat/completions",
            json={"model": served.model_id, "messages": [{"role": "user", "content": "안녕"}]},
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "moderation_unavailable"
        assert app.state.server.engine.state()["generated_tokens"] == 0
