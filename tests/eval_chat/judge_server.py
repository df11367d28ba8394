"""A judge (and a scripted answering model) on OpenAI's chat API, following stated rules.

Every expected score, verdict and flip in the tests is computed from these
rules and the answers, independently of the code under test:

- the graded reply is the text of the last <assistant>...</assistant> of a
  conversation (single: <conversation>; pairs: <conversation_a>, <conversation_b>);
- model `rules`, single: score = 1 + len(reply) % 10, answered "Score: [[score]]";
- model `rules`, pair: A and B within 3 characters of each other -> [[A]] (a
  position bias, so such a pair flips when swapped); else the longer wins;
- `flaky`: as `rules`, but the first reply to each distinct prompt has no verdict;
- `broken`: never a verdict;
- `storm`: 429 with `Retry-After: 0` to the first STORM_429S requests, then `rules`;
- `slow`: `rules` after SLOW_S seconds (to kill a run mid-way);
- `scripted-en`: an answering model that always replies in English.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

STORM_429S = 9
SLOW_S = 0.15
SCRIPTED_REPLY = "This reply is written in plain English, whatever the question was."
_LAST_ASSISTANT = re.compile(r"<assistant>\n(.*?)\n</assistant>", re.DOTALL)


def graded_reply(block: str) -> str:
    return _LAST_ASSISTANT.findall(block)[-1]


def section(prompt: str, tag: str) -> str:
    return prompt.split(f"<{tag}>\n", 1)[1].split(f"\n</{tag}>", 1)[0] + "\n"


def expected_score(reply: str) -> int:
    return 1 + len(reply) % 10


def expected_choice(reply_a: str, reply_b: str) -> str:
    if abs(len(reply_a) - len(reply_b)) <= 3:
        return "A"
    return "A" if len(reply_a) > len(reply_b) else "B"


class Message(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[Message]
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass
class JudgeLog:
    prompts: list[tuple[str, str]] = field(default_factory=list)  # (model, user prompt)
    answered: list[str] = field(default_factory=list)  # scripted-en's questions
    seen: set[tuple[str, str]] = field(default_factory=set)  # (model, prompt)
    storm_left: int = STORM_429S
    lock: threading.Lock = field(default_factory=threading.Lock)

    def judged(self, model: str) -> list[str]:
        return [p for m, p in self.prompts if m == model]


def _verdict(prompt: str) -> str:
    if "<conversation_a>" in prompt:
        a = graded_reply(section(prompt, "conversation_a"))
        b = graded_reply(section(prompt, "conversation_b"))
        return f"Compared.\n[[{expected_choice(a, b)}]]"
    reply = graded_reply(section(prompt, "conversation"))
    return f"Checked.\nScore: [[{expected_score(reply)}]]"


def judge_app(log: JudgeLog) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: ChatRequest):
        user = body.messages[-1].content
        if body.model == "scripted-en":
            with log.lock:
                log.answered.append(user)
            content = SCRIPTED_REPLY
        else:
            with log.lock:
                if body.model == "storm" and log.storm_left > 0:
                    log.storm_left -= 1
                    return JSONResponse(
                        {"error": {"message": "slow down", "type": "rate_limit", "code": None}},
                        status_code=429,
                        headers={"Retry-After": "0"},
                    )
                first_time = (body.model, user) not in log.seen
                log.seen.add((body.model, user))
                log.prompts.append((body.model, user))
            if body.model == "slow":
                time.sleep(SLOW_S)
            if body.model == "broken" or (body.model == "flaky" and first_time):
                content = "I would rather not commit to a verdict."
            else:
                content = _verdict(user)
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": len(user),
                "completion_tokens": len(content),
                "total_tokens": len(user) + len(content),
            },
        }

    return app
