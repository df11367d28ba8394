"""`chatbaker eval-chat` end to end over real HTTP: the tiny model answers, the rule judge grades.

Expected scores, winners and flips come from the judge's stated rules
(judge_server.py) applied to the answers, and the answer language from
Unicode character names, not from the code under test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import openai
import pytest
from sacrebleu.metrics import CHRF

from chatbaker_megatron.eval_chat.cli import compose_eval_chat, evaluate, main_argv
from tests.eval_chat.conftest import QUESTIONS, TINY_ID, Servers, overrides
from tests.eval_chat.judge_server import STORM_429S, expected_choice, expected_score

MODELS = ("tiny-a", "tiny-b", "scripted")


def language(text: str) -> str | None:
    """ko / en / other by Unicode names: Hangul >= 50% of letters, else Latin >= 80%."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return None
    hangul = sum("HANGUL" in unicodedata.name(ch, "") for ch in letters) / len(letters)
    latin = sum("LATIN" in unicodedata.name(ch, "") for ch in letters) / len(letters)
    return "ko" if hangul >= 0.5 else "en" if latin >= 0.8 else "other"


def question_language(q: dict) -> str:
    return language(" ".join(q["turns"])) or "other"


def mismatched(q: dict, reply: str) -> bool:
    found = language(reply)
    return found is not None and found != question_language(q)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def answers_of(output: Path) -> dict[str, dict[int, list[str]]]:
    return {
        model: {
            r["question_id"]: r["choices"][0]["turns"]
            for r in read_jsonl(output / "model_answer" / f"{model}.jsonl")
        }
        for model in MODELS
    }


@pytest.fixture(scope="module")
def answered(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder after a single-grading run (answers and judgments made)."""
    output = tmp_path_factory.mktemp("answered")
    evaluate(compose_eval_chat(overrides(servers, output, "mode=single")))
    return output


def fresh_output(answered: Path, tmp_path: Path) -> Path:
    """A new output folder holding only `answered`'s answers."""
    shutil.copytree(answered / "model_answer", tmp_path / "model_answer")
    return tmp_path


def expected_single(answers: dict[str, dict[int, list[str]]]) -> dict[tuple, int]:
    return {
        (model, q["question_id"], turn): (
            1
            if mismatched(q, answers[model][q["question_id"]][turn - 1])
            else expected_score(answers[model][q["question_id"]][turn - 1])
        )
        for model in MODELS
        for q in QUESTIONS
        for turn in (1, 2)
    }


def test_answers_are_the_models_own_conversation(servers: Servers, answered: Path):
    answers = answers_of(answered)
    client = openai.OpenAI(base_url=f"{servers.tiny_url}/v1", api_key="none")
    for q in QUESTIONS[2:3]:  # a Korean one: two calls, as the run made them
        messages = []
        for turn, user in enumerate(q["turns"]):
            messages.append({"role": "user", "content": user})
            reply = client.chat.completions.create(
                model=TINY_ID, messages=messages, max_tokens=14, temperature=0.0
            )
            text = reply.choices[0].message.content
            assert answers["tiny-b"][q["question_id"]][turn] == text
            messages.append({"role": "assistant", "content": text})
    record = read_jsonl(answered / "model_answer" / "tiny-a.jsonl")[0]
    assert set(record) >= {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert record["generation"]["max_tokens"] == 6


def test_single_grades_follow_the_rules(servers: Servers, answered: Path):
    answers = answers_of(answered)
    for model in MODELS:
        for turns in answers[model].values():
            assert not any("`" in t for t in turns)  # no code spans: language() needs no stripping
    expected = expected_single(answers)
    records = read_jsonl(answered / "model_judgment" / "rules_single.jsonl")
    got = {(r["model"], r["question_id"], r["turn"]): r for r in records}
    assert {k: r["score"] for k, r in got.items()} == expected
    # Korean questions answered in English are settled without the judge, and counted.
    for q in QUESTIONS:
        settled = got[("scripted", q["question_id"], 1)]["source"] == "language"
        assert settled == (question_language(q) == "ko")
    judged = [k for k, r in got.items() if r["source"] == "judge"]
    mismatches = len(expected) - len(judged)
    assert mismatches >= 4
    assert len(servers.judge_log.judged("rules")) == len(judged)
    report = json.loads((answered / "report.json").read_text(encoding="utf-8"))
    for model in MODELS:
        mine = [v for (m, _, _), v in expected.items() if m == model]
        overall = report["scores"][model]["overall"]
        assert overall["value"] == pytest.approx(sum(mine) / len(mine))
        assert overall["low"] <= overall["value"] <= overall["high"]
        assert report["scores"][model]["language_mismatches"] == sum(
            1 for k in expected if k[0] == model and got[k]["source"] == "language"
        )
    # Reference answers reach the judge for the math and reasoning turns only.
    reasoning = got[("tiny-a", 1, 2)]
    if reasoning["source"] == "judge":
        assert "<reference>\nTom is younger.\n</reference>" in reasoning["user_prompt"]
        assert reasoning["judge"][1] == "en/single-ref-turn2"
    stem = got[("tiny-b", 4, 1)]
    if stem["source"] == "judge":
        assert "<reference>" not in stem["user_prompt"]
        assert stem["judge"][1] == "ko/single"
    assert (answered / "report.png").stat().st_size > 10_000
    assert "Questions: 4 (2 en, 2 ko)" in (answered / "report.md").read_text(encoding="utf-8")


def test_pairwise_both_orders_flips_and_ranking(servers: Servers, answered: Path, tmp_path: Path):
    output = fresh_output(answered, tmp_path)
    _, report = evaluate(compose_eval_chat(overrides(servers, output, "mode=pairwise")))
    answers = answers_of(output)
    assert list(report["calls"]["endpoints"]) == ["judge rules"]  # the answers were reused
    expected_flips = judged = 0
    for pair in report["pairwise"]["pairs"]:
        m1, m2 = pair["model_1"], pair["model_2"]
        outcomes = []
        for q in QUESTIONS:
            for turn in (1, 2):
                a, b = (answers[m][q["question_id"]][turn - 1] for m in (m1, m2))
                bad_a, bad_b = mismatched(q, a), mismatched(q, b)
                if bad_a or bad_b:
                    outcomes.append(0.5 if bad_a and bad_b else 0.0 if bad_a else 1.0)
                    continue
                judged += 1
                g1 = {"A": 1.0, "B": 0.0}[expected_choice(a, b)]
                g2 = {"A": 0.0, "B": 1.0}[expected_choice(b, a)]
                expected_flips += g1 != g2
                outcomes.append(g1 if g1 == g2 else 0.5)
        assert pair["wins"] == outcomes.count(1.0)
        assert pair["ties"] == outcomes.count(0.5)
        assert pair["losses"] == outcomes.count(0.0)
        assert pair["win_rate"]["value"] == pytest.approx(sum(outcomes) / len(outcomes))
    assert report["pairwise"]["flip_rate"]["flips"] == expected_flips
    assert report["pairwise"]["flip_rate"]["judged"] == judged
    assert report["calls"]["endpoints"]["judge rules"]["requests"] == 2 * judged
    assert {row["model"] for row in report["pairwise"]["ranking"]} == set(MODELS)
    baseline = compose_eval_chat(
        overrides(servers, output, "mode=pairwise", "pairwise.baseline=tiny-a")
    )
    _, against = evaluate(baseline)
    assert [(p["model_1"], p["model_2"]) for p in against["pairwise"]["pairs"]] == [
        ("tiny-b", "tiny-a"),
        ("scripted", "tiny-a"),
    ]
    assert against["pairwise"]["ranking"] is None


def test_reference_metric_is_chrf_against_the_references(
    servers: Servers, answered: Path, tmp_path: Path
):
    output = fresh_output(answered, tmp_path)
    _, report = evaluate(compose_eval_chat(overrides(servers, output, "mode=reference")))
    answers = answers_of(output)
    records = read_jsonl(output / "model_judgment" / "chrf_reference.jsonl")
    metric = CHRF()
    expected = {}
    for model in MODELS:
        for q in QUESTIONS:
            for turn, reference in enumerate(q.get("reference", []), 1):
                reply = answers[model][q["question_id"]][turn - 1]
                score = (
                    0.0 if mismatched(q, reply) else metric.sentence_score(reply, [reference]).score
                )
                expected[(model, q["question_id"], turn)] = score
    assert {
        (r["model"], r["question_id"], r["turn"]): r["score"] for r in records
    } == pytest.approx(expected)
    assert "Judge-free reference metric" in (output / "report.md").read_text(encoding="utf-8")
    assert report["judge"] == "chrF reference metric"


def test_malformed_verdicts_are_retried_then_errors(
    servers: Servers, answered: Path, tmp_path: Path
):
    flaky = fresh_output(answered, tmp_path / "flaky")
    _, report = evaluate(
        compose_eval_chat(overrides(servers, flaky, "mode=single", "judge.model=flaky"))
    )
    expected = expected_single(answers_of(flaky))
    records = read_jsonl(flaky / "model_judgment" / "flaky_single.jsonl")
    assert {(r["model"], r["question_id"], r["turn"]): r["score"] for r in records} == expected
    judged = sum(1 for r in records if r["source"] == "judge")
    assert report["calls"]["parse_retries"] == judged
    broken = fresh_output(answered, tmp_path / "broken")
    args = overrides(servers, broken, "mode=single", "judge.model=broken", "judge.parse_retries=1")
    assert main_argv(args) == 1
    records = read_jsonl(broken / "model_judgment" / "broken_single.jsonl")
    errors = [r for r in records if r["error"] is not None]
    assert len(errors) == judged
    assert all(r["score"] is None and "no verdict" in r["error"] for r in errors)
    assert len(servers.judge_log.judged("broken")) == 2 * judged
    report = json.loads((broken / "report.json").read_text(encoding="utf-8"))
    assert sum(m["errors"] for m in report["scores"].values()) == judged
    # The errors are asked again by the next run, not taken as scores.
    assert main_argv(args) == 1
    assert len(servers.judge_log.judged("broken")) == 4 * judged


def test_a_429_storm_is_ridden_out(servers: Servers, answered: Path, tmp_path: Path):
    output = fresh_output(answered, tmp_path)
    _, report = evaluate(
        compose_eval_chat(
            overrides(servers, output, "mode=single", "judge.model=storm", "client.concurrency=3")
        )
    )
    records = read_jsonl(output / "model_judgment" / "storm_single.jsonl")
    expected = expected_single(answers_of(output))
    assert {(r["model"], r["question_id"], r["turn"]): r["score"] for r in records} == expected
    calls = report["calls"]["endpoints"]["judge storm"]
    assert calls["retries"] == STORM_429S
    assert calls["failures"] == 0


def test_killed_run_resumes(servers: Servers, answered: Path, tmp_path: Path):
    output = fresh_output(answered, tmp_path)
    args = overrides(servers, output, "mode=single", "judge.model=slow", "client.concurrency=1")
    judgments = output / "model_judgment" / "slow_single.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    child = subprocess.Popen(
        [sys.executable, "-m", "chatbaker_megatron.cli", "eval-chat", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (judgments.exists() and judgments.read_text().count("\n") >= 3):
        assert child.poll() is None and time.monotonic() < deadline, "the run ended too soon"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with judgments.open("a", encoding="utf-8") as f:
        f.write('{"question_id": 1, "model": "tiny-')  # a line cut short by the kill
    done = len(judgments.read_text().splitlines()) - 1
    before = len(servers.judge_log.judged("slow"))
    _, report = evaluate(compose_eval_chat(args))
    expected = expected_single(answers_of(output))
    records = read_jsonl(judgments)
    assert {(r["model"], r["question_id"], r["turn"]): r["score"] for r in records} == expected
    judged_done = sum(1 for r in records[:done] if r["source"] == "judge")
    total_judged = sum(1 for r in records if r["source"] == "judge")
    assert len(servers.judge_log.judged("slow")) - before == total_judged - judged_done
    assert report["calls"]["endpoints"]["judge slow"]["requests"] == total_judged - judged_done


def test_dry_run_counts_calls(servers: Servers, answered: Path, tmp_path: Path, capsys):
    empty = tmp_path / "empty"
    assert main_argv(["--dry-run", *overrides(servers, empty, "mode=pairwise")]) == 0
    out = capsys.readouterr().out
    turns = sum(len(q["turns"]) for q in QUESTIONS)
    assert f"model calls: {len(MODELS) * turns} (0 answers cached)" in out
    assert f"judge calls: {3 * turns * 2} " in out
    assert not empty.exists() or not any(empty.rglob("*.jsonl"))
    cached = fresh_output(answered, tmp_path / "cached")
    assert main_argv(["--dry-run", *overrides(servers, cached, "mode=single")]) == 0
    out = capsys.readouterr().out
    records = read_jsonl(answered / "model_judgment" / "rules_single.jsonl")
    judged = sum(1 for r in records if r["source"] == "judge")
    assert "model calls: 0 " in out
    assert f"judge calls: {judged} " in out
    assert f"{len(records) - judged} settled by a language mismatch" in out


def test_answers_made_with_other_settings_are_refused(
    servers: Servers, answered: Path, tmp_path: Path, capsys
):
    output = fresh_output(answered, tmp_path)
    assert main_argv(overrides(servers, output, "models.tiny-a.max_tokens=7")) == 2
    assert "tiny-a.jsonl holds answers made with" in capsys.readouterr().err
