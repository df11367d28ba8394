"""`--dry-run`: how many model and judge calls a run will make, and roughly how many tokens.

Counted from the output folder as it is: cached answers and judgments cost
nothing, and a judgment whose answers are cached and in the wrong language
is settled without the judge. Tokens are estimated, not counted (no
tokenizer of a hosted model is at hand offline): one token per 4 ASCII
characters plus one per other character (a Hangul syllable is about one
token in the common BPE vocabularies). Answers not yet made are assumed to
use their whole `max_tokens`, and completions are bounded by `max_tokens`,
so the figures are upper estimates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from chatbaker_megatron.eval_chat.judging import answer_mismatch
from chatbaker_megatron.eval_chat.prompts import JudgePrompt, pair_prompt, single_prompt
from chatbaker_megatron.eval_chat.runner import EvalChat, Item


def estimate_tokens(text: str) -> int:
    ascii_chars = sum(1 for ch in text if ch.isascii())
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


@dataclass
class CallPlan:
    questions: int = 0
    model_calls: int = 0
    model_prompt_tokens: int = 0
    model_completion_tokens: int = 0
    cached_answers: int = 0
    judge_calls: int = 0
    judge_calls_with_retries: int = 0
    judge_prompt_tokens: int = 0
    judge_completion_tokens: int = 0
    cached_judgments: int = 0
    settled_by_language: int = 0


def _prompts(run: EvalChat, item: Item, answers: list[list[str]]) -> list[JudgePrompt]:
    q = item.question
    if run.cfg.mode == "pairwise":
        return [
            pair_prompt(q, answers[0], answers[1], item.turn),
            pair_prompt(q, answers[1], answers[0], item.turn),
        ]
    return [single_prompt(q, answers[0], item.turn)]


def plan_run(run: EvalChat) -> CallPlan:
    cfg = run.cfg
    plan = CallPlan(questions=len(run.questions))
    missing = run.missing_answers()
    plan.cached_answers = len(cfg.models) * len(run.answered_questions()) - len(missing)
    for name, q in missing:
        budget = cfg.models[name].max_tokens
        for k in range(1, len(q.turns) + 1):
            plan.model_calls += 1
            plan.model_prompt_tokens += (
                sum(estimate_tokens(t) for t in q.turns[:k]) + (k - 1) * budget
            )
            plan.model_completion_tokens += budget
    if cfg.mode == "reference":
        return plan
    for item in run.items():
        records = run.item_answers(item)
        unanswered = 0
        if records is None:
            texts = [[""] * len(item.question.turns) for _ in item.models]
            unanswered = sum(cfg.models[name].max_tokens for name in item.models) * item.turn
        else:
            if run.cached(item, records) is not None:
                plan.cached_judgments += 1
                continue
            if any(
                answer_mismatch(item.question, r, item.turn, cfg.language_check) for r in records
            ):
                plan.settled_by_language += 1
                continue
            texts = [r["choices"][0]["turns"] for r in records]
        for prompt in _prompts(run, item, texts):
            plan.judge_calls += 1
            plan.judge_prompt_tokens += (
                estimate_tokens(prompt.system) + estimate_tokens(prompt.user) + unanswered
            )
            plan.judge_completion_tokens += cfg.judge.max_tokens
    plan.judge_calls_with_retries = plan.judge_calls * (1 + cfg.judge.parse_retries)
    return plan


def render_plan(run: EvalChat, plan: CallPlan) -> str:
    cfg = run.cfg
    judge = (
        "chrF against the references (no judge)"
        if cfg.mode == "reference"
        else (f"{cfg.judge.model} at {cfg.judge.base_url}")
    )
    lines = [
        f"eval-chat dry run: mode {cfg.mode}, {plan.questions} questions, "
        f"{len(cfg.models)} models ({', '.join(cfg.models)}), judge: {judge}",
        f"model calls: {plan.model_calls} ({plan.cached_answers} answers cached), "
        f"~{plan.model_prompt_tokens:,} prompt + <= {plan.model_completion_tokens:,} completion tokens",
    ]
    if cfg.mode != "reference":
        lines.append(
            f"judge calls: {plan.judge_calls} (up to {plan.judge_calls_with_retries} if every "
            f"reply needed its {cfg.judge.parse_retries} re-asks; {plan.cached_judgments} cached, "
            f"{plan.settled_by_language} settled by a language mismatch), "
            f"~{plan.judge_prompt_tokens:,} prompt + <= {plan.judge_completion_tokens:,} "
            "completion tokens"
        )
    lines.append("tokens: estimated (4 ASCII characters or 1 other character per token)")
    return "\n".join(lines)


def plan_dict(plan: CallPlan) -> dict[str, int]:
    return asdict(plan)
