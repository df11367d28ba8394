"""Judgments: single-answer grades, pairwise verdicts (both orders), and the chrF reference metric.

An answer in another language than its question (language.py) is settled
without the judge: the lowest grade (1; chrF 0), or in a pair a loss to an
answer in the right language (a tie when both are wrong). A judge reply
without a verdict is asked again `judge.parse_retries` times, then recorded
as an error with the reply, never as a default score; so is a call that
failed for good. Pairs are judged twice, A/B and B/A: a verdict that flips
with the order is a tie, and the record says it flipped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chatbaker_megatron.config.eval_chat import JudgeConfig, LanguageCheckConfig
from chatbaker_megatron.eval_chat.answers import answer_turns
from chatbaker_megatron.eval_chat.client import CallFailed, ChatClient
from chatbaker_megatron.eval_chat.language import is_mismatch
from chatbaker_megatron.eval_chat.prompts import (
    SCORE_MIN,
    JudgePrompt,
    pair_prompt,
    parse_choice,
    parse_score,
    single_prompt,
)
from chatbaker_megatron.eval_chat.questions import Question
from chatbaker_megatron.eval_chat.store import Record

CHRF = "chrf"
# Which of a pair won, in the judge's A/B terms -> in the pair's model_1/model_2 terms.
_SHOWN_FIRST = {"A": "model_1", "B": "model_2", "tie": "tie"}
_SHOWN_SECOND = {"A": "model_2", "B": "model_1", "tie": "tie"}


@dataclass
class Judge:
    """The judge endpoint; `parse_retries` counts the replies asked again for lack of a verdict."""

    name: str
    client: ChatClient
    cfg: JudgeConfig
    parse_retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ask(self, prompt: JudgePrompt, parse: Callable[[str], Any]) -> tuple[Any, str, str | None]:
        """(verdict, last reply, error); the verdict is None exactly when error is set."""
        tries = 1 + self.cfg.parse_retries
        reply = ""
        for attempt in range(tries):
            if attempt:
                with self._lock:
                    self.parse_retries += 1
            try:
                reply = self.client.complete(
                    prompt.messages(),
                    temperature=self.cfg.temperature,
                    max_tokens=self.cfg.max_tokens,
                )
            except CallFailed as err:
                return None, reply, f"judge call failed: {err}"
            verdict = parse(reply)
            if verdict is not None:
                return verdict, reply, None
        return None, reply, f"no verdict in the judge's reply after {tries} tries"


def answer_mismatch(
    question: Question, answer: Record, turn: int, check: LanguageCheckConfig
) -> bool:
    return is_mismatch(question.language, answer_turns(answer)[turn - 1], check)


def judge_single(
    judge: Judge,
    question: Question,
    model: str,
    answer: Record,
    turn: int,
    check: LanguageCheckConfig,
) -> Record:
    record: Record = {
        "question_id": question.question_id,
        "model": model,
        "turn": turn,
        "answer_id": answer["answer_id"],
    }
    if answer_mismatch(question, answer, turn, check):
        return record | {
            "judge": [judge.name, "language-mismatch"],
            "score": SCORE_MIN,
            "source": "language",
            "error": None,
            "tstamp": time.time(),
        }
    prompt = single_prompt(question, answer_turns(answer), turn)
    score, reply, error = judge.ask(prompt, parse_score)
    return record | {
        "judge": [judge.name, prompt.name],
        "user_prompt": prompt.user,
        "judgment": reply,
        "score": score,
        "source": "judge",
        "error": error,
        "tstamp": time.time(),
    }


def _language_pair_verdict(bad_1: bool, bad_2: bool) -> str:
    if bad_1 and bad_2:
        return "tie"
    return "model_2" if bad_1 else "model_1"


def judge_pair(
    judge: Judge,
    question: Question,
    models: tuple[str, str],
    answers: tuple[Record, Record],
    turn: int,
    check: LanguageCheckConfig,
) -> Record:
    """model_1 is shown as A in game 1 (g1) and as B in game 2 (g2)."""
    record: Record = {
        "question_id": question.question_id,
        "model_1": models[0],
        "model_2": models[1],
        "turn": turn,
        "answer_ids": [answers[0]["answer_id"], answers[1]["answer_id"]],
    }
    bad = [answer_mismatch(question, answer, turn, check) for answer in answers]
    if any(bad):
        winner = _language_pair_verdict(*bad)
        return record | {
            "judge": [judge.name, "language-mismatch"],
            "g1_winner": winner,
            "g2_winner": winner,
            "winner": winner,
            "flip": False,
            "source": "language",
            "error": None,
            "tstamp": time.time(),
        }
    turns = [answer_turns(answer) for answer in answers]
    first = pair_prompt(question, turns[0], turns[1], turn)
    g1, g1_reply, error = judge.ask(first, parse_choice)
    second = pair_prompt(question, turns[1], turns[0], turn)
    g2, g2_reply = None, ""
    if error is None:
        g2, g2_reply, error = judge.ask(second, parse_choice)
    g1_winner = _SHOWN_FIRST[g1] if g1 else None
    g2_winner = _SHOWN_SECOND[g2] if g2 else None
    consistent = g1_winner == g2_winner
    return record | {
        "judge": [judge.name, first.name],
        "g1_user_prompt": first.user,
        "g1_judgment": g1_reply,
        "g2_user_prompt": second.user,
        "g2_judgment": g2_reply,
        "g1_winner": g1_winner,
        "g2_winner": g2_winner,
        "winner": None if error else (g1_winner if consistent else "tie"),
        "flip": None if error else not consistent,
        "source": "judge",
        "error": error,
        "tstamp": time.time(),
    }


def chrf_reference(
    question: Question, model: str, answer: Record, turn: int, check: LanguageCheckConfig
) -> Record:
    """chrF (sacrebleu, 0-100) of the answer against the question's reference for `turn`."""
    from sacrebleu.metrics import CHRF as SacreChrf

    reference = question.reference_for(turn)
    if reference is None:
        raise ValueError(f"question {question.question_id}: no reference answer for turn {turn}")
    mismatch = answer_mismatch(question, answer, turn, check)
    metric = SacreChrf()
    chrf = metric.sentence_score(answer_turns(answer)[turn - 1], [reference]).score
    score = 0.0 if mismatch else chrf
    return {
        "question_id": question.question_id,
        "model": model,
        "turn": turn,
        "answer_id": answer["answer_id"],
        "judge": [CHRF, str(metric.get_signature())],
        "score": score,
        "source": "language" if mismatch else CHRF,
        "error": None,
        "tstamp": time.time(),
    }
