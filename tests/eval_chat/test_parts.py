"""eval-chat's parts without servers: questions, verdict parsing, language check, caches, statistics."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats

from chatbaker_megatron.config.checks import ConfigError
from chatbaker_megatron.config.eval_chat import LanguageCheckConfig, QuestionsConfig
from chatbaker_megatron.eval_chat.cli import compose_eval_chat
from chatbaker_megatron.eval_chat.language import is_mismatch
from chatbaker_megatron.eval_chat.prompts import parse_choice, parse_score, prompt_set
from chatbaker_megatron.eval_chat.questions import (
    CATEGORIES,
    REFERENCE_CATEGORIES,
    QuestionFileError,
    load_questions,
    read_question_file,
)
from chatbaker_megatron.eval_chat.stats import bootstrap_mean, bradley_terry
from chatbaker_megatron.eval_chat.store import JsonlStore

CHECK = LanguageCheckConfig()


def test_bundled_questions_cover_the_categories_in_both_languages():
    questions = load_questions(QuestionsConfig(), CHECK)
    per = Counter((q.language, q.category) for q in questions)
    assert per == {(lang, c): 5 for lang in ("ko", "en") for c in CATEGORIES}
    assert len({q.key for q in questions}) == 80
    for q in questions:
        assert len(q.turns) == 2
        if q.category in REFERENCE_CATEGORIES:
            assert q.reference is not None and all(q.reference) and len(q.reference) == 2
    korean = " ".join(t for q in questions if q.language == "ko" for t in q.turns)
    for local in ("부산", "제주", "원", "설날", "추석", "세종대왕", "김치"):
        assert local in korean


def test_prompt_sets_differ_by_language():
    assert "심사위원" in prompt_set("ko")["system_single"]
    assert "impartial" in prompt_set("en")["system_single"]
    assert prompt_set("other") == prompt_set("en")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"question_id": 1, "category": "math"}', "missing field 'turns'"),
        ('{"question_id": 1, "category": "math", "turns": []}', "turns must be a non-empty list"),
        (
            '{"question_id": 1, "category": "math", "turns": ["a"], "reference": ["x", "y"]}',
            "reference must be a list of at most 1",
        ),
        ('{"question_id": true, "category": "math", "turns": ["a"]}', "question_id=True"),
    ],
)
def test_bad_question_lines_are_named(tmp_path: Path, line: str, message: str):
    path = tmp_path / "question.jsonl"
    path.write_text('{"question_id": 7, "category": "stem", "turns": ["ok"]}\n' + line + "\n")
    with pytest.raises(QuestionFileError) as err:
        read_question_file(path, CHECK)
    assert str(err.value).startswith(f"{path}:2: ")
    assert message in str(err.value)


def test_duplicate_ids_across_files_are_refused(tmp_path: Path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"question_id": 1001, "category": "stem", "turns": ["Why?"]}\n')
    with pytest.raises(QuestionFileError, match="question_id 1001 appears in"):
        load_questions(QuestionsConfig(bundled=["en"], files=[str(path)]), CHECK)


def test_verdicts_parse_strictly():
    assert parse_score("Fine work.\nScore: [[7]]") == 7
    assert parse_score("first [[3]] then [[ 8 ]]") == 8
    assert parse_score("Score: [[11]]") is None
    assert parse_score("Score: 7") is None
    assert parse_choice("A is better: [[A]]") == "A"
    assert parse_choice("[[C]]") == "tie"
    assert parse_choice("neither") is None


def test_language_mismatch():
    code = "다음 함수입니다.\n```python\ndef initials(s):\n    return [c for c in s]\n```"
    assert not is_mismatch("ko", code, CHECK)
    assert is_mismatch("ko", "The answer is one thousand won.", CHECK)
    assert not is_mismatch("ko", "1,000", CHECK)
    assert is_mismatch("en", "정답은 다섯 개입니다.", CHECK)
    assert not is_mismatch("en", "정답은 다섯 개입니다.", LanguageCheckConfig(enabled=False))


def test_a_line_cut_by_a_kill_is_dropped(tmp_path: Path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 1, "v": 1}\n{"question_id": 2, "v"')
    store = JsonlStore(path, lambda r: (r["question_id"],))
    assert store.dropped_partial_line and len(store) == 1
    store.put({"question_id": 2, "v": 2})
    store.put({"question_id": 1, "v": 3})
    again = JsonlStore(path, lambda r: (r["question_id"],))
    assert [json.loads(line)["v"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert again.get(1)["v"] == 3 and again.get(2)["v"] == 2


def test_bootstrap_interval_matches_scipy():
    values = list(np.random.default_rng(3).integers(1, 11, size=60).astype(float))
    ours = bootstrap_mean(values, resamples=20_000, confidence=0.95, seed=1)
    theirs = stats.bootstrap(
        (np.asarray(values),),
        np.mean,
        n_resamples=20_000,
        confidence_level=0.95,
        method="percentile",
        random_state=np.random.default_rng(2),
    ).confidence_interval
    assert ours.value == pytest.approx(np.mean(values))
    # Two independent Monte Carlo estimates of the same percentiles.
    assert ours.low == pytest.approx(theirs.low, abs=0.06)
    assert ours.high == pytest.approx(theirs.high, abs=0.06)
    assert bootstrap_mean([], resamples=100, confidence=0.95, seed=0) is None


def test_bradley_terry_is_the_maximum_likelihood_fit():
    battles = [(0, 1, 1.0)] * 7 + [(0, 1, 0.0)] * 3 + [(1, 2, 1.0)] * 6 + [(1, 2, 0.5)] * 2
    battles += [(0, 2, 1.0)] * 5 + [(0, 2, 0.0)] * 1
    # The prior of one virtual tie per pair, as stated in stats.py.
    with_prior = battles + [(0, 1, 0.5), (0, 2, 0.5), (1, 2, 0.5)]

    def negative_log_likelihood(theta: np.ndarray) -> float:
        total = 0.0
        for i, j, outcome in with_prior:
            p = 1 / (1 + np.exp(theta[j] - theta[i]))
            total -= outcome * np.log(p) + (1 - outcome) * np.log(1 - p)
        return total

    fit = optimize.minimize(negative_log_likelihood, np.zeros(3), method="BFGS", tol=1e-10).x
    elo = 400 * (fit - fit.mean()) / np.log(10) + 1000
    assert bradley_terry(battles, 3) == pytest.approx(elo, abs=0.05)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("mode=judge", "mode='judge': expected one of single, pairwise, reference"),
        ("+models.x={base_url:'http://h/v1',model:m,colour:red}", "models.x.colour: unknown"),
        ("models.demo-plm.max_tokens=0", "models.demo-plm.max_tokens=0: expected >= 1"),
        ("models.demo-sft.base_url=localhost:8000", "expected an http(s):// URL"),
        ("pairwise.baseline=gpt", "pairwise.baseline='gpt': not one of the models"),
        ("questions.bundled=[ja]", "questions.bundled[0]='ja': expected one of ko, en"),
    ],
)
def test_bad_config_names_the_key(override: str, message: str):
    with pytest.raises(ConfigError) as err:
        compose_eval_chat([override])
    assert message in str(err.value)
