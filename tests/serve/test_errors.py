"""Bad requests get a 4xx in OpenAI's error schema naming the field, and the server keeps serving."""

from __future__ import annotations

import httpx2
import pytest


def _chat(served, body, *, key: str | None = "default", raw: bytes | None = None):
    key = served.api_key if key == "default" else key
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    url = f"{served.base_url}/v1/chat/completions"
    if raw is not None:
        return httpx2.post(
            url, content=raw, headers={**headers, "Content-Type": "application/json"}
        )
    return httpx2.post(url, json=body, headers=headers)


def _good(served, **fields):
    return {
        "model": served.model_id,
        "messages": [{"role": "user", "content": "안녕"}],
        "max_tokens": 3,
        **fields,
    }


@pytest.mark.parametrize(
    ("case", "status", "param", "code"),
    [
        ("malformed json", 400, None, None),
        ("unknown model", 404, "model", "model_not_found"),
        ("missing messages", 400, "messages", None),
        ("no messages", 400, "messages", None),
        ("max_tokens 0", 400, "max_tokens", None),
        ("max_tokens negative", 400, "max_tokens", None),
        ("unknown role", 400, "messages[0].role", None),
        ("assistant last", 400, "messages", None),
        ("n too many", 400, "n", None),
        ("max_tokens true", 400, "max_tokens", None),
        ("stream yes", 400, "stream", None),
        ("seed past 64 bits", 400, "seed", None),
        ("five stop strings", 400, "stop", None),
        ("unknown field", 400, "foo", None),
        ("tools", 400, "tools", "unsupported_parameter"),
        ("response_format json", 400, "response_format", "unsupported_parameter"),
        ("top_logprobs alone", 400, "top_logprobs", "unsupported_parameter"),
        ("logit_bias past the vocabulary", 400, "logit_bias", None),
        ("over-long prompt", 400, "messages", "context_length_exceeded"),
        ("wrong key", 401, None, "invalid_api_key"),
        ("missing key", 401, None, "invalid_api_key"),
    ],
)
def test_bad_chat_requests(served, case, status, param, code):
    good = _good(served)
    send = {
        "malformed json": lambda: _chat(served, None, raw=b'{"model": "x", "messages": [}'),
        "unknown model": lambda: _chat(served, {**good, "model": "gpt-4"}),
        "missing messages": lambda: _chat(served, {"model": served.model_id}),
        "no messages": lambda: _chat(served, {**good, "messages": []}),
        "max_tokens 0": lambda: _chat(served, {**good, "max_tokens": 0}),
        "max_tokens negative": lambda: _chat(served, {**good, "max_tokens": -5}),
        "unknown role": lambda: _chat(
            served, {**good, "messages": [{"role": "robot", "content": "hi"}]}
        ),
        "assistant last": lambda: _chat(
            served, {**good, "messages": [{"role": "assistant", "content": "hi"}]}
        ),
        "n too many": lambda: _chat(served, {**good, "n": 17}),
        "max_tokens true": lambda: _chat(served, {**good, "max_tokens": True}),
        "stream yes": lambda: _chat(served, {**good, "stream": "yes"}),
        "seed past 64 bits": lambda: _chat(served, {**good, "seed": 2**64}),
        "five stop strings": lambda: _chat(served, {**good, "stop": list("abcde")}),
        "unknown field": lambda: _chat(served, {**good, "foo": 1}),
        "tools": lambda: _chat(served, {**good, "tools": [{"type": "function"}]}),
        "response_format json": lambda: _chat(
            served, {**good, "response_format": {"type": "json_object"}}
        ),
        "top_logprobs alone": lambda: _chat(served, {**good, "top_logprobs": 2}),
        "logit_bias past the vocabulary": lambda: _chat(
            served, {**good, "logit_bias": {"99999": 5}}
        ),
        "over-long prompt": lambda: _chat(
            served, {**good, "messages": [{"role": "user", "content": "가나다 " * 600}]}
        ),
        "wrong key": lambda: _chat(served, good, key="not-the-key"),
        "missing key": lambda: _chat(served, good, key=None),
    }[case]
    response = send()
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == code
    assert error["type"] in ("invalid_request_error",) and error["message"]
    if param:
        assert param.split("[")[0] in error["message"]
    # The server still serves.
    after = _chat(served, good)
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["role"] == "assistant"


def test_bad_completion_requests(served):
    headers = {"Authorization": f"Bearer {served.api_key}"}
    url = f"{served.base_url}/v1/completions"
    for body, param in [
        ({"model": served.model_id, "prompt": ""}, "prompt"),
        ({"model": served.model_id}, "prompt"),
        ({"model": served.model_id, "prompt": "가", "temperature": -1}, "temperature"),
        ({"model": served.model_id, "prompt": "가", "top_p": 0}, "top_p"),
        ({"model": served.model_id, "prompt": "가", "suffix": "나"}, "suffix"),
        ({"model": served.model_id, "prompt": "가", "best_of": 3}, "best_of"),
        ({"model": served.model_id, "prompt": "가", "echo": 1}, "echo"),
        ({"model": served.model_id, "prompt": "가", "logprobs": 6}, "logprobs"),
        ({"model": served.model_id, "prompt": [5, 99999]}, "prompt"),
        ({"model": served.model_id, "prompt": "가", "stream": True, "echo": True}, "echo"),
    ]:
        response = httpx2.post(url, json=body, headers=headers)
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == param
    models = httpx2.get(f"{served.base_url}/v1/models", headers=headers)
    assert models.status_code == 200
    assert httpx2.get(f"{served.base_url}/v1/models").status_code == 401
