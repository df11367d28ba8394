"""The evaluation report: results.json, results.md and results.png in the output directory.

Each task is scored by its suite's headline metric (KoBEST: macro F1, as
the ChatBaker comparison reports it; English: accuracy); suite averages are
unweighted means over the suite's tasks and sit next to the published
figures in references.py. Local sample tasks are a handful of documents
written for CI: their numbers test the pipeline, not the model, and the
report says so.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chatbaker_megatron.eval.references import KOBEST_MACRO_F1_AVERAGE, KOBEST_SOURCE
from chatbaker_megatron.eval.runner import TaskResult

HEADLINE = {"kobest": "f1", "english": "acc"}
METRIC_NAMES = {"f1": "macro F1", "acc": "accuracy"}
RESULTS_JSON, RESULTS_MD, RESULTS_PNG = "results.json", "results.md", "results.png"


@dataclass(frozen=True)
class Row:
    family: str
    task: str
    metric: str
    value: float
    stderr: float | None
    samples: int


def headline_metric(result: TaskResult) -> str:
    preferred = HEADLINE.get(result.family)
    if preferred in result.metrics:
        return preferred
    for name in ("acc", "f1", "acc_norm", "exact_match"):
        if name in result.metrics:
            return name
    return sorted(result.metrics)[0]


def rows_of(results: list[TaskResult]) -> list[Row]:
    rows = []
    for result in results:
        metric = headline_metric(result)
        rows.append(
            Row(
                result.family,
                result.task,
                metric,
                result.metrics[metric],
                result.stderrs.get(metric),
                result.samples,
            )
        )
    return rows


def averages(rows: list[Row]) -> dict[str, dict[str, Any]]:
    """Unweighted mean of the headline metric per suite (KoBEST, English)."""
    out = {}
    for family, metric in HEADLINE.items():
        values = [row.value for row in rows if row.family == family and row.metric == metric]
        if values:
            out[family] = {
                "metric": metric,
                "value": sum(values) / len(values),
                "tasks": len(values),
            }
    return out


def _is_local(rows: list[Row]) -> bool:
    return any(row.task.endswith("_local") for row in rows)


def render_markdown(
    model: str, rows: list[Row], means: dict[str, dict[str, Any]], meta: dict[str, Any]
) -> str:
    lines = [
        f"# Evaluation of {model}",
        "",
        f"lm-evaluation-harness {meta.get('lm_eval_version')}, zero-shot, "
        f"limit {meta.get('limit') or 'none'}, seed {meta.get('seed')}.",
        "",
        "| suite | task | metric | value | ± stderr | documents |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        stderr = f"{row.stderr:.4f}" if row.stderr is not None else "n/a"
        name = METRIC_NAMES.get(row.metric, row.metric)
        lines.append(
            f"| {row.family} | {row.task} | {name} | {row.value:.4f} | {stderr} | {row.samples} |"
        )
    if means:
        lines += ["", "## Suite averages", ""]
        if "kobest" in means:
            refs = list(KOBEST_MACRO_F1_AVERAGE)
            lines += [
                "| suite | metric | this model | " + " | ".join(refs) + " |",
                "|---|---|---|" + "---|" * len(refs),
                f"| KoBEST ({means['kobest']['tasks']} tasks) | macro F1 | {means['kobest']['value']:.4f} | "
                + " | ".join(f"{KOBEST_MACRO_F1_AVERAGE[r]:.3f}" for r in refs)
                + " |",
                "",
                f"References: {KOBEST_SOURCE}.",
            ]
        if "english" in means:
            lines += [
                "",
                f"English ({means['english']['tasks']} tasks), mean accuracy: {means['english']['value']:.4f} "
                "(no published figures to compare with).",
            ]
    if _is_local(rows):
        lines += [
            "",
            "Local sample tasks (`*_local`) hold a few documents written to test the pipeline;",
            "their scores say nothing about the model and are not comparable to the references.",
        ]
    return "\n".join(lines) + "\n"


def render_chart(path: Path, model: str, rows: list[Row], means: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if "kobest" in means else 1
    widths = [max(len(rows), 2), 4][:panels]
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(3 + 0.45 * sum(widths), 4.5),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    ax = axes[0][0]
    colors = ["tab:blue" if row.family == "kobest" else "tab:orange" for row in rows]
    ax.bar(range(len(rows)), [row.value for row in rows], color=colors)
    ax.set_xticks(range(len(rows)), [row.task for row in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (KoBEST: macro F1, English: accuracy)")
    ax.set_title(f"{model}: per task")
    if panels == 2:
        ax = axes[0][1]
        names = ["this model", *KOBEST_MACRO_F1_AVERAGE]
        values = [means["kobest"]["value"], *KOBEST_MACRO_F1_AVERAGE.values()]
        bars = ax.bar(
            range(len(names)), values, color=["tab:blue"] + ["tab:gray"] * (len(names) - 1)
        )
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title("KoBEST average macro F1 vs published")
    if _is_local(rows):
        fig.text(
            0.01, 0.01, "local CI samples: not comparable to the published figures", fontsize=7
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    output: Path, model: str, results: list[TaskResult], meta: dict[str, Any]
) -> dict[str, Path]:
    """Write the three files; returns their paths."""
    output.mkdir(parents=True, exist_ok=True)
    rows = rows_of(results)
    means = averages(rows)
    record = {
        "model": model,
        "meta": meta,
        "rows": [asdict(row) for row in rows],
        "averages": means,
        "tasks": [asdict(result) for result in results],
        "references": {"kobest_macro_f1_average": KOBEST_MACRO_F1_AVERAGE, "source": KOBEST_SOURCE},
        "local_samples": _is_local(rows),
    }
    paths = {
        "json": output / RESULTS_JSON,
        "markdown": output / RESULTS_MD,
        "chart": output / RESULTS_PNG,
    }
    paths["json"].write_text(
        json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    paths["markdown"].write_text(render_markdown(model, rows, means, meta), encoding="utf-8")
    render_chart(paths["chart"], model, rows, means)
    return paths
