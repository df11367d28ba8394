"""The judge's prompts (judge_prompts.yaml, Korean or English by the question) and its verdicts.

A prompt is a system message (the judge's role) and a user message: the
conversation(s) in tags, the reference answer when the question is graded
against one, and the task and verdict lines. The tags are the same in every
language so that a reply is parsed the same way:

    <conversation>  <user>..</user> <assistant>..</assistant> ... </conversation>
    <conversation_a> ... </conversation_a>  <conversation_b> ... </conversation_b>
    <reference> .. </reference>

The graded reply is the last <assistant> of each conversation.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

import yaml

from chatbaker_megatron.eval_chat.questions import Question

PROMPT_KEYS = (
    "system_single",
    "system_pair",
    "task_single",
    "task_pair",
    "task_turn2",
    "task_reference",
    "verdict_single",
    "verdict_pair",
)
SCORE_MIN, SCORE_MAX = 1, 10
_SCORE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_CHOICE = re.compile(r"\[\[\s*([ABC])\s*\]\]")
PAIR_VERDICTS = {"A": "A", "B": "B", "C": "tie"}


@functools.cache
def prompt_set(language: str) -> dict[str, str]:
    """The prompt texts of `language` (ko; anything else gets the English set)."""
    text = (resources.files("chatbaker_megatron.eval_chat") / "judge_prompts.yaml").read_text(
        encoding="utf-8"
    )
    sets = yaml.safe_load(text)
    chosen = sets["ko" if language == "ko" else "en"]
    missing = [key for key in PROMPT_KEYS if key not in chosen]
    if missing:
        raise ValueError(f"judge_prompts.yaml: {language} lacks {', '.join(missing)}")
    return chosen


@dataclass(frozen=True)
class JudgePrompt:
    name: str  # e.g. ko/single-ref-turn2, recorded with each judgment
    system: str
    user: str

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]


def _conversation(tag: str, question: Question, answers: list[str], turn: int) -> str:
    lines = [f"<{tag}>"]
    for user, assistant in zip(question.turns[:turn], answers[:turn]):
        lines += ["<user>", user, "</user>", "<assistant>", assistant, "</assistant>"]
    lines.append(f"</{tag}>")
    return "\n".join(lines)


def _name(kind: str, question: Question, turn: int) -> str:
    parts = [kind] + (["ref"] if question.graded_with_reference(turn) else [])
    parts += ["turn2"] if turn > 1 else []
    return f"{'ko' if question.language == 'ko' else 'en'}/{'-'.join(parts)}"


def _assemble(kind: str, question: Question, turn: int, conversations: list[str]) -> JudgePrompt:
    texts = prompt_set(question.language)
    body = list(conversations)
    if question.graded_with_reference(turn):
        body.append(f"<reference>\n{question.reference_for(turn)}\n</reference>")
    task = [texts[f"task_{kind}"]]
    if turn > 1:
        task.append(texts["task_turn2"])
    if question.graded_with_reference(turn):
        task.append(texts["task_reference"])
    task.append(texts[f"verdict_{kind}"])
    user = "\n\n".join(body) + "\n\n" + "\n".join(task)
    return JudgePrompt(_name(kind, question, turn), texts[f"system_{kind}"], user)


def single_prompt(question: Question, answers: list[str], turn: int) -> JudgePrompt:
    """Grade turn `turn` (1-based) of one model's answers."""
    return _assemble(
        "single", question, turn, [_conversation("conversation", question, answers, turn)]
    )


def pair_prompt(
    question: Question, answers_a: list[str], answers_b: list[str], turn: int
) -> JudgePrompt:
    """Compare turn `turn` of two models' answers, A shown first."""
    return _assemble(
        "pair",
        question,
        turn,
        [
            _conversation("conversation_a", question, answers_a, turn),
            _conversation("conversation_b", question, answers_b, turn),
        ],
    )


def parse_score(reply: str) -> float | None:
    """The last [[N]] of the reply with N in 1..10, or None."""
    found = _SCORE.findall(reply)
    if not found:
        return None
    score = float(found[-1])
    return score if SCORE_MIN <= score <= SCORE_MAX else None


def parse_choice(reply: str) -> str | None:
    """'A', 'B' or 'tie' from the last [[A]] / [[B]] / [[C]] of the reply, or None."""
    found = _CHOICE.findall(reply)
    return PAIR_VERDICTS[found[-1]] if found else None
