"""`chatbaker eval-chat [--dry-run] [overrides]`: judge chat models on two-turn questions.

The config is conf/eval_chat.yaml plus Hydra overrides (`mode=pairwise`,
`judge.model=gpt-4o`, `+models.mine.base_url=...`), checked against
config/eval_chat.py's schema before any call. `--dry-run` prints the calls
and tokens the run would use and exits. The output folder keeps the answers
and judgments (FastChat's layout) and report.{md,json,png}; running again
resumes. Exit status 1 when a call or a judgment failed for good (the report
counts them), 2 for a bad config or question file.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf.errors import OmegaConfBaseException

from chatbaker_megatron.config.checks import ConfigError
from chatbaker_megatron.config.compose import compose_config
from chatbaker_megatron.config.eval_chat import EvalChatConfig, register, to_eval_chat_config
from chatbaker_megatron.eval_chat.client import CallFailed
from chatbaker_megatron.eval_chat.questions import QuestionFileError
from chatbaker_megatron.eval_chat.runner import EvalChat, StaleAnswersError


def compose_eval_chat(overrides: list[str]) -> EvalChatConfig:
    """The validated EvalChatConfig for these Hydra overrides."""
    register()
    cfg = to_eval_chat_config(compose_config("eval_chat", overrides, EvalChatConfig))
    cfg.validate()
    return cfg


def calls_summary(run: EvalChat, unanswered: int) -> dict[str, Any]:
    endpoints = {name: client.counts.as_dict() for name, client in run.clients.items()}
    parse_retries = 0
    if run.judge is not None:
        endpoints[f"judge {run.judge.name}"] = run.judge.client.counts.as_dict()
        parse_retries = run.judge.parse_retries
    return {
        "endpoints": endpoints,
        "parse_retries": parse_retries,
        "answer_failures": len(run.answer_failures),
        "unanswered": unanswered,
    }


def evaluate(cfg: EvalChatConfig) -> tuple[EvalChat, dict[str, Any]]:
    """Answer, judge and report; returns the run and the report."""
    from chatbaker_megatron.eval_chat.report import build_report, write_report

    run = EvalChat(cfg)
    run.answer_all()
    unanswered = run.judge_all()
    judge = (
        "chrF reference metric"
        if cfg.mode == "reference"
        else (f"{cfg.judge.model} ({run.judge_label})")
    )
    report = build_report(
        cfg, run.questions, run.current_judgments(), calls_summary(run, unanswered), judge
    )
    write_report(run.output, report)
    return run, report


def _failed(report: dict[str, Any]) -> int:
    groups = report["pairwise"]["pairs"] if "pairwise" in report else report["scores"].values()
    return sum(g["errors"] for g in groups) + report["calls"]["answer_failures"]


def main_argv(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    dry_run = "--dry-run" in argv
    overrides = [a for a in argv if a != "--dry-run"]
    try:
        cfg = compose_eval_chat(overrides)
        if dry_run:
            from chatbaker_megatron.eval_chat.plan import plan_run, render_plan

            run = EvalChat(cfg)
            print(render_plan(run, plan_run(run)))
            return 0
        run, report = evaluate(cfg)
    except (ConfigError, OmegaConfBaseException, QuestionFileError, StaleAnswersError) as err:
        print(f"chatbaker eval-chat: {err}", file=sys.stderr)
        return 2
    except (CallFailed, FileNotFoundError) as err:
        print(f"chatbaker eval-chat: {err}", file=sys.stderr)
        return 1
    print((run.output / "report.md").read_text(encoding="utf-8"))
    for failure in run.answer_failures:
        print(f"answer failed: {failure}", file=sys.stderr)
    print(f"report: {run.output / 'report.md'} (+ report.json, report.png)")
    return 1 if _failed(report) else 0
