"""OpenAI's fields honoured: logprobs and top_logprobs, echo with prompt logprobs, logit_bias,
n > 1, token-id prompts, GET /v1/models/{id}; checked against transformers' own forward."""

from __future__ import annotations

import math

import httpx2
import pytest
import torch
from openai import OpenAI

from tests.serve.conftest import API_KEY

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def client(served) -> OpenAI:
    return OpenAI(base_url=f"{served.base_url}/v1", api_key=served.api_key, max_retries=0)


@pytest.fixture(scope="module")
def hf_model(served_hf):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(served_hf), dtype=torch.float32).eval()


def _log_softmax(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_echo_scores_the_prompt_as_lm_eval_asks(served, hf_model):
    """lm-eval's local-completions log-likelihood request: token ids, echo, logprobs 1, 1 token."""
    tokenizer = served.app.state.server.served.tokenizer
    ids = tokenizer.encode("대한민국의 수도는 서울입니다.")
    body = {
        "model": served.model_id,
        "prompt": [ids, ids[:5]],
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "seed": 1234,
        "echo": True,
    }
    response = httpx2.post(f"{served.base_url}/v1/completions", json=body, headers=HEADERS)
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    for choice, prompt in zip(choices, [ids, ids[:5]]):
        logprobs = choice["logprobs"]
        expected = _log_softmax(hf_model, prompt)
        scores = logprobs["token_logprobs"]
        assert len(scores) == len(prompt) + 1 and scores[0] is None
        reference = [expected[i - 1, prompt[i]].item() for i in range(1, len(prompt))]
        reference.append(expected[-1].max().item())  # the greedy token generated
        assert scores[1:] == pytest.approx(reference, abs=1e-4)
        tops = logprobs["top_logprobs"]
        assert tops[0] is None and all(len(top) == 1 for top in tops[1:])
        assert max(tops[-1].values()) == scores[-1]  # lm-eval's is_greedy check
        assert choice["text"].startswith(tokenizer.decode(prompt))


def test_chat_logprobs_and_top_logprobs(served, client):
    reply = client.chat.completions.create(
        model=served.model_id,
        messages=[{"role": "user", "content": "안녕"}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.logprob == tops[0]  # greedy: the chosen token is the most likely
        assert math.fsum(math.exp(t) for t in tops) <= 1 + 1e-6
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token


def test_logit_bias_n_and_seeds(served, client):
    tokenizer = served.app.state.server.served.tokenizer
    token = tokenizer.encode("a")[0]
    biased = client.completions.create(
        model=served.model_id,
        prompt="가나다",
        max_tokens=5,
        temperature=0,
        logit_bias={str(token): 100},
        logprobs=0,
    )
    assert biased.choices[0].logprobs.tokens == [tokenizer.decode([token])] * 5
    ask = dict(model=served.model_id, prompt="하나 둘", max_tokens=8, temperature=1.0, seed=5)
    three = client.completions.create(**ask, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    alone = client.completions.create(**ask)
    assert three.choices[0].text == alone.choices[0].text  # sample i draws from seed + i
    again = client.completions.create(**{**ask, "seed": 6})
    assert three.choices[1].text == again.choices[0].text
    assert three.usage.prompt_tokens == alone.usage.prompt_tokens


def test_models_by_id(served, client):
    assert client.models.retrieve(served.model_id).id == served.model_id
    missing = httpx2.get(f"{served.base_url}/v1/models/gpt-4", headers=HEADERS)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert httpx2.get(f"{served.base_url}/favicon.ico").status_code == 200


def test_a_reply_sent_back_as_the_client_dumped_it_is_accepted(served, client):
    first = client.chat.completions.create(
        model=served.model_id, messages=[{"role": "user", "content": "안녕"}], max_tokens=4
    )
    dumped = first.choices[0].message.model_dump()  # refusal, tool_calls, ... all None
    messages = [{"role": "user", "content": "안녕"}, dumped, {"role": "user", "content": "또"}]
    url = f"{served.base_url}/v1/chat/completions"
    body = {"model": served.model_id, "messages": messages, "max_tokens": 2}
    assert httpx2.post(url, json=body, headers=HEADERS).status_code == 200
    dumped["tool_calls"] = [{"id": "1", "type": "function"}]
    refused = httpx2.post(url, json=body, headers=HEADERS)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages"
    assert "tool_calls" in refused.json()["error"]["message"]
