"""Servers for the eval-chat tests: `chatbaker serve` on the tiny SFT model and the rule judge.

Both run in this process (uvicorn threads on loopback ports), once per module.
The question file is small: two English and two Korean two-turn questions,
one of each language graded against a reference.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chatbaker_megatron.serve import cli as serve_cli
from tests.eval_chat.judge_server import JudgeLog, judge_app
from tests.support.serving import running

TINY_ID = "chatbaker-tiny"
QUESTIONS = [
    {
        "question_id": 1,
        "category": "reasoning",
        "turns": ["Who is older, Tom or Ann, if Ann was born first?", "And who is younger?"],
        "reference": ["Ann is older.", "Tom is younger."],
    },
    {
        "question_id": 2,
        "category": "writing",
        "turns": ["Write a line about the sea.", "Now make it rhyme."],
    },
    {
        "question_id": 3,
        "category": "math",
        "turns": ["사과 두 개에 2,000원이면 한 개는 얼마입니까?", "다섯 개는 얼마입니까?"],
        "reference": ["1,000원입니다.", "5,000원입니다."],
    },
    {
        "question_id": 4,
        "category": "stem",
        "turns": ["김치가 시어지는 이유는 무엇입니까?", "냉장고에서는 왜 천천히 시어집니까?"],
    },
]


@dataclass
class Servers:
    tiny_url: str
    judge_url: str
    judge_log: JudgeLog
    questions: Path


@pytest.fixture(scope="module")
def servers(exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args(["--hf", str(exported("tp1_sft")), "--model-name", TINY_ID])
    questions = tmp_path_factory.mktemp("eval_chat") / "question.jsonl"
    questions.write_text(
        "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8"
    )
    log = JudgeLog()
    with running(serve_cli.build_app(args)) as tiny_url, running(judge_app(log)) as judge_url:
        yield Servers(tiny_url, judge_url, log, questions)


def overrides(servers: Servers, output: Path, *extra: str) -> list[str]:
    """eval-chat overrides: the question file, three models, the rule judge, quick settings."""
    tiny = f"{servers.tiny_url}/v1"
    models = []
    for name, url, model, tokens in (
        ("tiny-a", tiny, TINY_ID, 6),
        ("tiny-b", tiny, TINY_ID, 14),
        ("scripted", f"{servers.judge_url}/v1", "scripted-en", 32),
    ):
        models += [
            f"+models.{name}.base_url={url}",
            f"+models.{name}.model={model}",
            f"+models.{name}.max_tokens={tokens}",
            f"+models.{name}.temperature=0.0",
        ]
    return [
        f"output={output}",
        "questions.bundled=[]",
        f"questions.files=[{servers.questions}]",
        "~models.demo-plm",
        "~models.demo-sft",
        *models,
        f"judge.base_url={servers.judge_url}/v1",
        "judge.model=rules",
        "judge.api_key_env=null",
        "client.backoff_s=0",
        "progress=false",
        "stats.bootstrap=200",
        *extra,
    ]
