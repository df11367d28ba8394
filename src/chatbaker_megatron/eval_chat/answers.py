"""The answering side: each model answers each question's turns in one conversation.

Turn n is asked with the model's own earlier answers in the messages, as a
user would see them. A record follows FastChat's model_answer format
(`question_id`, `answer_id`, `model_id`, `choices[0].turns`, `tstamp`) plus
`generation`, the sampling settings it was made with: answers cached under
other settings are refused rather than mixed (runner.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from chatbaker_megatron.config.eval_chat import EndpointConfig
from chatbaker_megatron.eval_chat.client import ChatClient
from chatbaker_megatron.eval_chat.questions import Question
from chatbaker_megatron.eval_chat.store import Record

# When a model's temperature is null: creative categories sample, the rest
# are near-greedy (MT-bench's convention).
CATEGORY_TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "stem": 0.1,
    "humanities": 0.1,
}


def temperature_for(endpoint: EndpointConfig, category: str) -> float:
    if endpoint.temperature is not None:
        return endpoint.temperature
    return CATEGORY_TEMPERATURE.get(category, 0.0)


def generation_settings(endpoint: EndpointConfig) -> dict[str, Any]:
    """What decides a model's answers besides the question (the URL does not)."""
    return {
        "model": endpoint.model,
        "temperature": endpoint.temperature,
        "top_p": endpoint.top_p,
        "max_tokens": endpoint.max_tokens,
        "seed": endpoint.seed,
        "extra_body": dict(endpoint.extra_body),
    }


def answer_id(model: str, question: Question, turns: list[str]) -> str:
    digest = hashlib.sha256(
        json.dumps([model, question.key, turns], ensure_ascii=False).encode("utf-8")
    )
    return digest.hexdigest()[:16]


def answer_turns(record: Record) -> list[str]:
    return list(record["choices"][0]["turns"])


def answer_question(model: str, client: ChatClient, question: Question) -> Record:
    """Ask every turn of `question`; raises CallFailed when a call fails for good."""
    endpoint = client.endpoint
    messages: list[dict[str, str]] = []
    turns: list[str] = []
    for user in question.turns:
        messages.append({"role": "user", "content": user})
        reply = client.complete(
            messages,
            temperature=temperature_for(endpoint, question.category),
            max_tokens=endpoint.max_tokens,
        )
        messages.append({"role": "assistant", "content": reply})
        turns.append(reply)
    return {
        "question_id": question.question_id,
        "answer_id": answer_id(model, question, turns),
        "model_id": model,
        "choices": [{"index": 0, "turns": turns}],
        "tstamp": time.time(),
        "generation": generation_settings(endpoint),
    }
