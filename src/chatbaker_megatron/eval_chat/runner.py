"""One `chatbaker eval-chat` run: answers, then judgments, each cached, then the report.

What is already in the output folder is not asked again (store.py), so a
killed run resumes and a second judge reuses the answers. Calls run on
`client.concurrency` threads with a progress bar per phase.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from chatbaker_megatron.config.eval_chat import EvalChatConfig, judge_name
from chatbaker_megatron.eval_chat.answers import answer_question, generation_settings
from chatbaker_megatron.eval_chat.client import CallFailed, ChatClient
from chatbaker_megatron.eval_chat.judging import (
    CHRF,
    Judge,
    chrf_reference,
    judge_pair,
    judge_single,
)
from chatbaker_megatron.eval_chat.questions import Question, load_questions
from chatbaker_megatron.eval_chat.store import JsonlStore, Record

ANSWER_DIR, JUDGMENT_DIR = "model_answer", "model_judgment"


class StaleAnswersError(ValueError):
    """Cached answers made with other sampling settings than the config's."""


@dataclass(frozen=True)
class Item:
    """One judgment to make: a question's turn for one model, or for a pair (model_1, model_2)."""

    question: Question
    models: tuple[str, ...]
    turn: int


def pairs(cfg: EvalChatConfig) -> list[tuple[str, str]]:
    """(model_1, model_2) pairs: every model against the baseline, else every two models."""
    names = list(cfg.models)
    baseline = cfg.pairwise.baseline
    if baseline is not None:
        return [(name, baseline) for name in names if name != baseline]
    return list(itertools.combinations(names, 2))


def _answer_key(record: Record) -> tuple:
    return (str(record["question_id"]),)


def _single_key(record: Record) -> tuple:
    return (str(record["question_id"]), record["model"], record["turn"], record["answer_id"])


def _pair_key(record: Record) -> tuple:
    return (
        str(record["question_id"]),
        record["model_1"],
        record["model_2"],
        record["turn"],
        *record["answer_ids"],
    )


class EvalChat:
    """The run's questions, caches and clients."""

    def __init__(self, cfg: EvalChatConfig) -> None:
        self.cfg = cfg
        self.output = Path(cfg.output)
        self.questions = load_questions(cfg.questions, cfg.language_check)
        self.answers = {
            name: JsonlStore(self.output / ANSWER_DIR / f"{name}.jsonl", _answer_key)
            for name in cfg.models
        }
        self._check_answer_settings()
        judgments = self.output / JUDGMENT_DIR
        if cfg.mode == "reference":
            self.judge_label = CHRF
            self.judgments = JsonlStore(judgments / f"{CHRF}_reference.jsonl", _single_key)
        else:
            self.judge_label = judge_name(cfg)
            suffix, key = ("pair", _pair_key) if cfg.mode == "pairwise" else ("single", _single_key)
            self.judgments = JsonlStore(judgments / f"{self.judge_label}_{suffix}.jsonl", key)
        self.clients: dict[str, ChatClient] = {}
        self.judge: Judge | None = None
        self.answer_failures: list[str] = []
        self._lock = threading.Lock()

    def _check_answer_settings(self) -> None:
        for name, store in self.answers.items():
            wanted = generation_settings(self.cfg.models[name])
            for record in store:
                if record.get("generation") != wanted:
                    raise StaleAnswersError(
                        f"{store.path} holds answers made with {record.get('generation')}, "
                        f"but models.{name} now asks for {wanted}: delete the file to answer "
                        "again, or give the model another name"
                    )

    # -- what to do ---------------------------------------------------------------

    def answered_questions(self) -> list[Question]:
        """The questions the mode needs answers to (reference: those with a reference)."""
        if self.cfg.mode == "reference":
            return [q for q in self.questions if q.reference is not None and any(q.reference)]
        return self.questions

    def missing_answers(self) -> list[tuple[str, Question]]:
        return [
            (name, q)
            for name in self.cfg.models
            for q in self.answered_questions()
            if self.answers[name].get(q.key) is None
        ]

    def items(self) -> Iterator[Item]:
        """Every judgment the mode asks for."""
        for q in self.questions:
            for turn in range(1, len(q.turns) + 1):
                if self.cfg.mode == "pairwise":
                    for pair in pairs(self.cfg):
                        yield Item(q, pair, turn)
                elif self.cfg.mode == "single" or q.reference_for(turn) is not None:
                    for name in self.cfg.models:
                        yield Item(q, (name,), turn)

    def item_answers(self, item: Item) -> list[Record] | None:
        """The cached answers an item needs, or None while one is missing."""
        found = []
        for name in item.models:
            answer = self.answers[name].get(item.question.key)
            if answer is None:
                return None
            found.append(answer)
        return found

    def cached(self, item: Item, answers: list[Record]) -> Record | None:
        """The item's judgment if it was made from these answers and did not fail."""
        ids = [a["answer_id"] for a in answers]
        record = self.judgments.get(item.question.key, *item.models, item.turn, *ids)
        return record if record is not None and record.get("error") is None else None

    # -- doing it -----------------------------------------------------------------

    def _client(self, name: str) -> ChatClient:
        with self._lock:  # one client (and one set of counts) per model, made on first use
            if name not in self.clients:
                self.clients[name] = ChatClient(name, self.cfg.models[name], self.cfg.client)
            return self.clients[name]

    def _judge(self) -> Judge:
        with self._lock:
            if self.judge is None:
                client = ChatClient(f"judge {self.judge_label}", self.cfg.judge, self.cfg.client)
                self.judge = Judge(self.judge_label, client, self.cfg.judge)
            return self.judge

    def _pool(self, desc: str, unit: str, jobs: list[Callable[[], None]]) -> None:
        if not jobs:
            return
        with (
            ThreadPoolExecutor(self.cfg.client.concurrency) as pool,
            tqdm(total=len(jobs), desc=desc, unit=unit, disable=not self.cfg.progress) as bar,
        ):
            for future in as_completed([pool.submit(job) for job in jobs]):
                future.result()
                bar.update()

    def answer_all(self) -> None:
        """Every missing answer; a model call that fails for good is recorded in answer_failures."""

        def job(name: str, question: Question) -> Callable[[], None]:
            def run() -> None:
                try:
                    record = answer_question(name, self._client(name), question)
                except CallFailed as err:
                    self.answer_failures.append(f"question {question.question_id}: {err}")
                    return
                self.answers[name].put(record)

            return run

        self._pool("answers", "question", [job(name, q) for name, q in self.missing_answers()])

    def _judgment(self, item: Item, answers: list[Record]) -> Record:
        check = self.cfg.language_check
        if self.cfg.mode == "reference":
            return chrf_reference(item.question, item.models[0], answers[0], item.turn, check)
        if self.cfg.mode == "pairwise":
            models = (item.models[0], item.models[1])
            return judge_pair(
                self._judge(), item.question, models, (answers[0], answers[1]), item.turn, check
            )
        return judge_single(
            self._judge(), item.question, item.models[0], answers[0], item.turn, check
        )

    def judge_all(self) -> int:
        """Every judgment not yet cached whose answers exist; returns how many lack an answer."""

        def job(item: Item, answers: list[Record]) -> Callable[[], None]:
            return lambda: self.judgments.put(self._judgment(item, answers))

        jobs: list[Callable[[], None]] = []
        unanswered = 0
        for item in self.items():
            answers = self.item_answers(item)
            if answers is None:
                unanswered += 1
            elif self.cached(item, answers) is None:
                jobs.append(job(item, answers))
        self._pool("judgments", "judgment", jobs)
        return unanswered

    def current_judgments(self) -> list[Record]:
        """The judgments of this run's items, made from the answers now cached (failed ones too)."""
        records = []
        for item in self.items():
            answers = self.item_answers(item)
            if answers is None:
                continue
            ids = [a["answer_id"] for a in answers]
            record = self.judgments.get(item.question.key, *item.models, item.turn, *ids)
            if record is not None:
                records.append(record)
        return records
