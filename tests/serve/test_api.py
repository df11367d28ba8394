"""The official openai client against `chatbaker serve`: chat and completions, streamed and not.

Replies are checked against the one-at-a-time Generator on the same prompt
(an independent decoding path: HFBackend's own cache, no batching), and the
prompt against encode_prompt, the code that built the SFT data.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
from openai import OpenAI

from chatbaker_megatron.data.preprocess.sft_tokenize import encode_prompt
from chatbaker_megatron.data.templates import Message
from chatbaker_megatron.inference.backends import HFBackend
from chatbaker_megatron.inference.chat_cli import turn_stops
from chatbaker_megatron.inference.generator import Generator
from chatbaker_megatron.inference.sampling import SamplingConfig

QUESTION = "안녕하세요? 한국어로 대답해 주세요."
# OpenAI's temperature 0 with the server's defaults: no repetition penalty, as in OpenAI's API.
GREEDY = SamplingConfig(greedy=True, max_new_tokens=12)


@pytest.fixture(scope="module")
def client(served) -> OpenAI:
    return OpenAI(base_url=f"{served.base_url}/v1", api_key=served.api_key, max_retries=0)


@pytest.fixture(scope="module")
def reference(served_hf):
    """The one-at-a-time generator over the same HF folder."""
    backend = HFBackend(served_hf)
    return backend, Generator(backend)


def test_models_and_health(served, client):
    assert [m.id for m in client.models.list().data] == [served.model_id]
    health = httpx2.get(f"{served.base_url}/health").json()
    assert health["status"] == "ok" and health["model"] == served.model_id
    assert health["max_batch"] == 4 and health["running"] >= 0


def test_chat_uses_the_sft_template_and_exact_usage(served, client, reference):
    backend, generator = reference
    reply = client.chat.completions.create(
        model=served.model_id,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=12,
        temperature=0,
    )
    prompt = encode_prompt(backend.tokenizer, backend.template, [Message("user", QUESTION)])
    stop_ids, stop_strings = turn_stops(backend.template, backend.tokenizer)
    expected = generator.generate(prompt, GREEDY, stop_ids=stop_ids, stop_strings=stop_strings)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected.text.lstrip()
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.usage.total_tokens == len(prompt) + len(expected.token_ids)
    assert reply.choices[0].finish_reason == (
        "length" if expected.stop_reason == "length" else "stop"
    )


def test_chat_stream_equals_the_whole_reply(served, client):
    ask = dict(
        model=served.model_id,
        messages=[
            {"role": "system", "content": "짧게 대답하세요."},
            {"role": "user", "content": "서울은 어떤 도시인가요?"},
            {"role": "assistant", "content": "큰 도시입니다."},
            {"role": "user", "content": QUESTION},
        ],
        max_tokens=24,
        temperature=0,
    )
    whole = client.chat.completions.create(**ask)
    chunks = list(
        client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    # Byte-level BPE splits Korean syllables over tokens: a piece that ended
    # mid-character would show U+FFFD where the whole reply has the character.
    text = whole.choices[0].message.content
    shown = ""
    for piece in pieces:
        shown += piece
        assert text.startswith(shown), f"{shown!r} is not how {text!r} starts"
    assert shown == text
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_completions_streamed_and_not(served, client, reference):
    backend, generator = reference
    prompt = "대한민국의 수도는"
    expected = generator.generate(backend.tokenizer.encode(prompt), GREEDY)
    whole = client.completions.create(
        model=served.model_id, prompt=prompt, max_tokens=12, temperature=0
    )
    assert whole.choices[0].text == expected.text
    assert whole.usage.prompt_tokens == len(backend.tokenizer.encode(prompt))
    assert whole.usage.completion_tokens == len(expected.token_ids)
    streamed = client.completions.create(
        model=served.model_id, prompt=prompt, max_tokens=12, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == expected.text


def test_stop_strings_cut_the_reply(served, client):
    whole = client.completions.create(
        model=served.model_id, prompt="대한민국의 수도는", max_tokens=12, temperature=0
    ).choices[0]
    assert len(whole.text) > 2, "the greedy continuation is long enough to cut"
    stop = whole.text[1:3]
    cut = client.completions.create(
        model=served.model_id, prompt="대한민국의 수도는", max_tokens=12, temperature=0, stop=[stop]
    ).choices[0]
    assert cut.text == whole.text[: whole.text.index(stop)]
    assert cut.finish_reason == "stop"


def test_batched_replies_equal_solo_replies_and_seeds_hold(served_in_thread):
    """Concurrent requests share forward passes, and each gets what it would get alone."""
    served = served_in_thread
    client = OpenAI(base_url=f"{served.base_url}/v1", api_key=served.api_key)
    decoder = served.app.state.server.engine.decoder
    batch_sizes: list[int] = []
    step = decoder.step

    def counting_step(tokens):
        batch_sizes.append(len(tokens))
        return step(tokens)

    prompts = ["하나", "둘 셋", "넷 다섯 여섯", "일곱"]

    def ask(prompt: str) -> str:
        return (
            client.completions.create(
                model=served.model_id, prompt=prompt, max_tokens=16, temperature=1.0, seed=11
            )
            .choices[0]
            .text
        )

    solo = [ask(p) for p in prompts]
    decoder.step = counting_step
    try:
        with ThreadPoolExecutor(len(prompts)) as pool:
            together = list(pool.map(ask, prompts))
    finally:
        del decoder.step
    assert together == solo
    assert max(batch_sizes) > 1, "concurrent requests never shared a forward pass"
