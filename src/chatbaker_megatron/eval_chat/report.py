"""The eval-chat report: report.json, report.md and report.png in the output folder.

Scores (single grading, or chrF in reference mode) per model: the mean over
judged turns with a percentile-bootstrap interval, overall, by language, by
turn and by category. Pairs: wins, ties and losses of model_1, its win rate
(a tie counts half) with an interval, the judge's position flips; with all
pairs judged, a Bradley-Terry ranking. Judgments that failed are counted,
never scored.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from chatbaker_megatron.config.eval_chat import EvalChatConfig
from chatbaker_megatron.eval_chat.questions import CATEGORIES, Question
from chatbaker_megatron.eval_chat.stats import bootstrap_mean, bradley_terry_intervals
from chatbaker_megatron.eval_chat.store import Record

REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "report.png"
OUTCOME = {"model_1": 1.0, "tie": 0.5, "model_2": 0.0}
REFERENCE_NOTE = (
    "**Judge-free reference metric.** chrF (sacrebleu) of each answer against the written "
    "reference answer of the math, reasoning and coding turns, 0-100. It measures character "
    "overlap with one reference, not the quality of a chat answer: use it for offline smoke "
    "runs, never to rank chat models."
)


def _estimate(cfg: EvalChatConfig, values: list[float]) -> dict[str, Any] | None:
    est = bootstrap_mean(
        values,
        resamples=cfg.stats.bootstrap,
        confidence=cfg.stats.confidence,
        seed=cfg.stats.seed,
    )
    return est.as_dict() if est is not None else None


def _grouped(cfg: EvalChatConfig, rows: list[tuple[str, float]]) -> dict[str, Any]:
    groups: dict[str, list[float]] = defaultdict(list)
    for key, value in rows:
        groups[key].append(value)
    return {key: _estimate(cfg, values) for key, values in sorted(groups.items())}


def score_summary(
    cfg: EvalChatConfig, questions: dict[str, Question], records: list[Record]
) -> dict[str, Any]:
    """Per model: estimates overall / by language / turn / category, mismatches, errors."""
    out: dict[str, Any] = {}
    for model in cfg.models:
        mine = [r for r in records if r["model"] == model]
        scored = [(questions[str(r["question_id"])], r) for r in mine if r.get("error") is None]
        out[model] = {
            "overall": _estimate(cfg, [r["score"] for _, r in scored]),
            "by_language": _grouped(cfg, [(q.language, r["score"]) for q, r in scored]),
            "by_turn": _grouped(cfg, [(str(r["turn"]), r["score"]) for _, r in scored]),
            "by_category": _grouped(cfg, [(q.category, r["score"]) for q, r in scored]),
            "language_mismatches": sum(1 for r in mine if r.get("source") == "language"),
            "errors": sum(1 for r in mine if r.get("error") is not None),
        }
    return out


def pair_summary(
    cfg: EvalChatConfig, questions: dict[str, Question], records: list[Record]
) -> dict[str, Any]:
    """Per pair: wins/ties/losses of model_1, win rate, flips; the judge's flip rate; BT ranking."""
    by_pair: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        by_pair[(r["model_1"], r["model_2"])].append(r)
    pairs_out = []
    judged = flips = 0
    for (m1, m2), rows in by_pair.items():
        done = [r for r in rows if r.get("error") is None]
        outcomes = [OUTCOME[r["winner"]] for r in done]
        by_judge = [r for r in done if r["source"] == "judge"]
        judged += len(by_judge)
        flips += sum(1 for r in by_judge if r["flip"])
        pairs_out.append(
            {
                "model_1": m1,
                "model_2": m2,
                "wins": sum(1 for r in done if r["winner"] == "model_1"),
                "ties": sum(1 for r in done if r["winner"] == "tie"),
                "losses": sum(1 for r in done if r["winner"] == "model_2"),
                "win_rate": _estimate(cfg, outcomes),
                "by_category": _grouped(
                    cfg,
                    [
                        (questions[str(r["question_id"])].category, OUTCOME[r["winner"]])
                        for r in done
                    ],
                ),
                "flips": sum(1 for r in by_judge if r["flip"]),
                "judged_by_judge": len(by_judge),
                "language_settled": sum(1 for r in done if r["source"] == "language"),
                "errors": len(rows) - len(done),
            }
        )
    summary: dict[str, Any] = {
        "pairs": pairs_out,
        "flip_rate": {"flips": flips, "judged": judged, "rate": flips / judged if judged else None},
        "ranking": None,
    }
    if cfg.pairwise.baseline is None:
        names = list(cfg.models)
        battles = [
            (names.index(r["model_1"]), names.index(r["model_2"]), OUTCOME[r["winner"]])
            for r in records
            if r.get("error") is None
        ]
        if battles:
            ratings = bradley_terry_intervals(
                battles,
                len(names),
                resamples=cfg.stats.bootstrap,
                confidence=cfg.stats.confidence,
                seed=cfg.stats.seed,
            )
            ranked = sorted(zip(names, ratings), key=lambda pair: -pair[1].value)
            summary["ranking"] = [{"model": n, **e.as_dict()} for n, e in ranked]
    return summary


def _cell(est: dict[str, Any] | None, digits: int = 2) -> str:
    if est is None:
        return "–"
    return f"{est['value']:.{digits}f} [{est['low']:.{digits}f}, {est['high']:.{digits}f}]"


def _score_tables(report: dict[str, Any]) -> list[str]:
    scores = report["scores"]
    unit = "chrF 0-100" if report["mode"] == "reference" else "score 1-10"
    languages = sorted({lang for m in scores.values() for lang in m["by_language"]})
    head = ["model", "overall", *languages, "turn 1", "turn 2", "turns scored"]
    head += ["language mismatches", "errors"]
    lines = [
        f"## Scores ({unit}, mean [{report['confidence']:.0%} bootstrap interval])",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for model, m in scores.items():
        n = m["overall"]["n"] if m["overall"] else 0
        cells = [model, _cell(m["overall"])]
        cells += [_cell(m["by_language"].get(lang)) for lang in languages]
        cells += [_cell(m["by_turn"].get("1")), _cell(m["by_turn"].get("2"))]
        cells += [str(n), str(m["language_mismatches"]), str(m["errors"])]
        lines.append("| " + " | ".join(cells) + " |")
    categories = [c for c in CATEGORIES if any(c in m["by_category"] for m in scores.values())]
    categories += sorted({c for m in scores.values() for c in m["by_category"]} - set(categories))
    lines += ["", "### By category", "", "| model | " + " | ".join(categories) + " |"]
    lines.append("|---|" + "---|" * len(categories))
    for model, m in scores.items():
        lines.append(
            f"| {model} | "
            + " | ".join(_cell(m["by_category"].get(c), 1) for c in categories)
            + " |"
        )
    return lines


def _pair_tables(report: dict[str, Any]) -> list[str]:
    summary = report["pairwise"]
    lines = [
        f"## Pairwise (win rate of model_1, a tie counting half, [{report['confidence']:.0%} "
        "bootstrap interval])",
        "",
        "| model_1 | model_2 | wins | ties | losses | win rate | flips | settled by language | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in summary["pairs"]:
        lines.append(
            f"| {p['model_1']} | {p['model_2']} | {p['wins']} | {p['ties']} | {p['losses']} | "
            f"{_cell(p['win_rate'], 3)} | {p['flips']}/{p['judged_by_judge']} | "
            f"{p['language_settled']} | {p['errors']} |"
        )
    flip = summary["flip_rate"]
    rate = f"{flip['rate']:.1%}" if flip["rate"] is not None else "n/a"
    lines += [
        "",
        f"Judge position flips (the verdict changed when A and B were swapped; counted as a "
        f"tie): {flip['flips']} of {flip['judged']} ({rate}).",
    ]
    if summary["ranking"]:
        lines += [
            "",
            "### Ranking (Bradley-Terry, Elo scale, mean 1000)",
            "",
            "| rank | model | rating |",
            "|---|---|---|",
        ]
        for rank, row in enumerate(summary["ranking"], 1):
            lines.append(f"| {rank} | {row['model']} | {_cell(row, 0)} |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    q = report["questions"]
    langs = ", ".join(f"{n} {lang}" for lang, n in sorted(q["by_language"].items()))
    judge = report["judge"]
    lines = [
        f"# Chat evaluation ({report['mode']})",
        "",
        f"Questions: {q['total']} ({langs}); models: {', '.join(report['models'])}; "
        f"judge: {judge}.",
        "",
    ]
    if report["mode"] == "reference":
        lines += [REFERENCE_NOTE, ""]
    lines += _pair_tables(report) if report["mode"] == "pairwise" else _score_tables(report)
    calls = report["calls"]
    lines += [
        "",
        "## Calls",
        "",
        "| endpoint | requests | retries | failed | prompt tokens | completion tokens |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in calls["endpoints"].items():
        lines.append(
            f"| {name} | {c['requests']} | {c['retries']} | {c['failures']} | "
            f"{c['prompt_tokens']} | {c['completion_tokens']} |"
        )
    lines += [
        "",
        f"Judge replies asked again for lack of a verdict: {calls['parse_retries']}. "
        f"Questions a model failed to answer: {calls['answer_failures']}. "
        f"Judgments still missing an answer: {calls['unanswered']}.",
    ]
    return "\n".join(lines) + "\n"


def _heights(estimates: list[dict[str, Any] | None]) -> tuple[list[float], list[list[float]]]:
    """Bar heights and their error bars (below, above); a missing estimate draws nothing."""
    values = [e["value"] if e else 0.0 for e in estimates]
    below = [e["value"] - e["low"] if e else 0.0 for e in estimates]
    above = [e["high"] - e["value"] if e else 0.0 for e in estimates]
    return values, [below, above]


def _bars(ax: Any, labels: list[str], estimates: list[dict[str, Any] | None], title: str) -> None:
    values, errors = _heights(estimates)
    colors = [f"C{i}" for i in range(len(labels))]
    ax.bar(range(len(labels)), values, yerr=errors, capsize=4, color=colors)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)


def _grouped_bars(
    ax: Any, groups: dict[str, dict[str, dict[str, Any] | None]], categories: list[str]
) -> None:
    width = 0.8 / max(len(groups), 1)
    for k, (name, by_category) in enumerate(groups.items()):
        xs = [i + (k - (len(groups) - 1) / 2) * width for i in range(len(categories))]
        values, errors = _heights([by_category.get(c) for c in categories])
        ax.bar(xs, values, width, yerr=errors, capsize=2, label=name)
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=7)


def render_chart(path: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2.5]}
    )
    if report["mode"] == "pairwise":
        pairs = report["pairwise"]["pairs"]
        _bars(
            left,
            [f"{p['model_1']}\nvs {p['model_2']}" for p in pairs],
            [p["win_rate"] for p in pairs],
            "win rate of model_1 (ties half)",
        )
        left.axhline(0.5, color="gray", linestyle="--", linewidth=1)
        left.set_ylim(0, 1)
        groups = {f"{p['model_1']} vs {p['model_2']}": p["by_category"] for p in pairs}
        right.set_title("win rate of model_1 by category", fontsize=10)
        right.set_ylim(0, 1)
    else:
        scores = report["scores"]
        unit = (
            "chrF (reference metric, not a judge)"
            if report["mode"] == "reference"
            else "judge score 1-10"
        )
        _bars(left, list(scores), [m["overall"] for m in scores.values()], f"mean {unit}")
        groups = {model: m["by_category"] for model, m in scores.items()}
        right.set_title(f"mean {unit} by category", fontsize=10)
        if report["mode"] == "single":
            for ax in (left, right):
                ax.set_ylim(0, 10)
    categories = [c for c in CATEGORIES if any(c in g for g in groups.values())]
    categories += sorted({c for g in groups.values() for c in g} - set(categories))
    _grouped_bars(right, groups, categories)
    fig.text(
        0.01,
        0.01,
        f"error bars: {report['confidence']:.0%} bootstrap intervals; judge: {report['judge']}",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(output: Path, report: dict[str, Any]) -> dict[str, Path]:
    """Write report.json, report.md and report.png; returns their paths."""
    output.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": output / REPORT_JSON,
        "markdown": output / REPORT_MD,
        "chart": output / REPORT_PNG,
    }
    paths["json"].write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
    render_chart(paths["chart"], report)
    return paths


def build_report(
    cfg: EvalChatConfig,
    questions: list[Question],
    records: list[Record],
    calls: dict[str, Any],
    judge: str,
) -> dict[str, Any]:
    by_id = {q.key: q for q in questions}
    by_language: dict[str, int] = defaultdict(int)
    for q in questions:
        by_language[q.language] += 1
    report: dict[str, Any] = {
        "mode": cfg.mode,
        "models": list(cfg.models),
        "judge": judge,
        "confidence": cfg.stats.confidence,
        "bootstrap_resamples": cfg.stats.bootstrap,
        "questions": {"total": len(questions), "by_language": dict(by_language)},
        "calls": calls,
    }
    if cfg.mode == "pairwise":
        report["pairwise"] = pair_summary(cfg, by_id, records)
    else:
        report["scores"] = score_summary(cfg, by_id, records)
    return report
