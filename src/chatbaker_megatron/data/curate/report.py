"""The curate report: documents and characters in/out per stage and language, removal reasons,
PII and bad-input counts; report.json, report.md and report.png in the output folder.

Everything comes from datatrove's per-task stats files
(`<logs>/<stage>/stats/<rank>.json`), summed here, so a SLURM run reports the
same way as a local one: the tallies (tally.py) give the stream at each
checkpoint, the filters their `dropped_<reason>` counts, the dedup stages
their drops, the readers their `bad_<kind>` counts, the PII scrubber its
`pii_<kind>` counts.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import unicodedata
from collections import Counter, defaultdict
from typing import Any

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from chatbaker_megatron.data.curate.inputs import UNREADABLE_FILE_STAT
from chatbaker_megatron.data.curate.tally import TALLY_PREFIX

REPORT_FILES = ("report.json", "report.md", "report.png")
# The dedup steps drop without a reason label; their drops are these reasons.
_DEDUP_REASONS = {
    "exact-deduplication stage 3": "exact_duplicate",
    "MinHash stage 4": "near_duplicate",
}
# Which stage the stream crossed between two checkpoints.
CHECKPOINT_STAGES = {
    "routed": "normalise + language routing",
    "quality": "boilerplate + quality filters",
    "pii": "PII scrubbing",
    "exact_dedup": "exact dedup",
    "near_dedup": "MinHash near-dedup",
}


def _plain(name: str) -> str:
    """A step's name without datatrove's emoji (the chart's font has none)."""
    return "".join(c for c in name if unicodedata.category(c) != "So").strip()


def _total(value: Any) -> float:
    return value.get("total", 0) if isinstance(value, dict) else value


def sum_stage_stats(stage_dir: str) -> list[tuple[str, defaultdict[str, float]]]:
    """The stats of one stage's steps (in pipeline order), each label summed over its tasks."""
    steps: dict[str, defaultdict[str, float]] = {}
    for path in sorted(glob.glob(os.path.join(stage_dir, "stats", "*.json"))):
        with open(path, encoding="utf-8") as f:
            for step in json.load(f):
                totals = steps.setdefault(step["name"], defaultdict(float))
                for label, value in step["stats"].items():
                    totals[label] += _total(value)
    return list(steps.items())


def build_report(stage_dirs: list[tuple[str, str]]) -> dict[str, Any]:
    checkpoints: list[dict[str, Any]] = []
    removals: Counter = Counter()
    pii: Counter = Counter()
    bad_input: Counter = Counter()
    unreadable_files: set[str] = set()
    boilerplate_lines = 0
    for _stage, stage_dir in stage_dirs:
        for name, stats in sum_stage_stats(stage_dir):
            step = _plain(name.split(": ", 1)[-1])
            if TALLY_PREFIX in name:
                by_language: dict[str, dict[str, int]] = defaultdict(dict)
                for label, value in stats.items():
                    kind, _, language = label.partition("_")
                    if language:
                        by_language[language][kind] = int(value)
                checkpoints.append(
                    {
                        "name": name.split(TALLY_PREFIX, 1)[1],
                        "docs": int(stats["docs"]),
                        "chars": int(stats["chars"]),
                        "by_language": dict(sorted(by_language.items())),
                    }
                )
                continue
            for label, value in stats.items():
                if label.startswith("dropped_"):
                    removals[f"{label.removeprefix('dropped_')} ({step})"] += int(value)
                elif label.startswith("bad_"):
                    bad_input[label.removeprefix("bad_")] += int(value)
                    removals[f"bad input: {label.removeprefix('bad_')}"] += int(value)
                elif label.startswith(UNREADABLE_FILE_STAT):
                    unreadable_files.add(label.removeprefix(UNREADABLE_FILE_STAT))
                elif label.startswith("reencoded_"):
                    bad_input[label] += int(value)
                elif label.startswith("pii_"):
                    pii[label.removeprefix("pii_")] += int(value)
                elif label == "lines_removed":
                    boilerplate_lines += int(value)
            for marker, reason in _DEDUP_REASONS.items():
                if marker in step and stats.get("dropped"):
                    removals[reason] += int(stats["dropped"])
    stages = []
    for before, after in itertools.pairwise(checkpoints):
        languages = sorted(set(before["by_language"]) | set(after["by_language"]))
        stages.append(
            {
                "stage": CHECKPOINT_STAGES.get(after["name"], after["name"]),
                "docs_in": before["docs"],
                "docs_out": after["docs"],
                "chars_in": before["chars"],
                "chars_out": after["chars"],
                "by_language": {
                    lang: {
                        "docs_in": before["by_language"].get(lang, {}).get("docs"),
                        "docs_out": after["by_language"].get(lang, {}).get("docs", 0),
                        "chars_in": before["by_language"].get(lang, {}).get("chars"),
                        "chars_out": after["by_language"].get(lang, {}).get("chars", 0),
                    }
                    for lang in languages
                },
            }
        )
    return {
        "checkpoints": checkpoints,
        "stages": stages,
        "removals": [{"reason": r, "docs": n} for r, n in removals.most_common()],
        "pii_replaced": dict(sorted(pii.items())),
        "bad_input": dict(sorted(bad_input.items())),
        "unreadable_files": sorted(unreadable_files),
        "boilerplate_lines_removed": boilerplate_lines,
        "output": checkpoints[-1] if checkpoints else None,
    }


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# Curate report", "", "## Stages", ""]
    lines += ["| stage | docs in | docs out | chars in | chars out |", "|---|---:|---:|---:|---:|"]
    for s in report["stages"]:
        lines.append(
            f"| {s['stage']} | {s['docs_in']:,} | {s['docs_out']:,} | {s['chars_in']:,} | {s['chars_out']:,} |"
        )
        for lang, v in s["by_language"].items():
            docs_in = "" if v["docs_in"] is None else f"{v['docs_in']:,}"
            chars_in = "" if v["chars_in"] is None else f"{v['chars_in']:,}"
            lines.append(
                f"| &nbsp;&nbsp;{lang} | {docs_in} | {v['docs_out']:,} | {chars_in} | {v['chars_out']:,} |"
            )
    out = report["output"]
    if out:
        lines += ["", "## Output", "", "| language | docs | chars |", "|---|---:|---:|"]
        for lang, v in out["by_language"].items():
            lines.append(f"| {lang} | {v.get('docs', 0):,} | {v.get('chars', 0):,} |")
        lines.append(f"| total | {out['docs']:,} | {out['chars']:,} |")
    lines += ["", "## Top removal reasons", "", "| reason | docs |", "|---|---:|"]
    lines += [f"| {r['reason']} | {r['docs']:,} |" for r in report["removals"][:15]]
    lines += ["", "## PII replaced", "", "| kind | replaced |", "|---|---:|"]
    lines += [f"| {k} | {n:,} |" for k, n in report["pii_replaced"].items()]
    lines += ["", f"Boilerplate lines removed: {report['boilerplate_lines_removed']:,}", ""]
    lines += ["## Bad input", ""]
    if report["bad_input"]:
        lines += ["| kind | count |", "|---|---:|"]
        lines += [f"| {k} | {n:,} |" for k, n in report["bad_input"].items()]
    else:
        lines.append("none")
    if report["unreadable_files"]:
        lines += ["", "Files read only in part, or not at all (see the job's log):", ""]
        lines += [f"- `{path}`" for path in report["unreadable_files"]]
    lines += ["", "![documents per checkpoint and removal reasons](report.png)", ""]
    return "\n".join(lines)


def _chart(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    names = [c["name"] for c in report["checkpoints"]]
    languages = sorted({lang for c in report["checkpoints"] for lang in c["by_language"]})
    series = [("total", [c["docs"] for c in report["checkpoints"]])]
    series += [
        (lang, [c["by_language"].get(lang, {}).get("docs", 0) for c in report["checkpoints"]])
        for lang in languages
    ]
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
        left.bar([x + i * width for x in range(len(names))], values, width, label=label)
    left.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=20)
    left.set_ylabel("documents")
    left.set_title("Documents after each stage")
    left.legend()
    top = report["removals"][:10][::-1]
    right.barh([r["reason"] for r in top], [r["docs"] for r in top], color="tab:red")
    right.set_xlabel("documents removed")
    right.set_title("Top removal reasons")
    right.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(output: str, stage_dirs: list[tuple[str, str]]) -> dict[str, Any]:
    """report.json, report.md and report.png under `output`; returns the report."""
    report = build_report(stage_dirs)
    with open(os.path.join(output, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False, indent=1)
    with open(os.path.join(output, "report.md"), "w", encoding="utf-8") as f:
        f.write(_markdown(report))
    _chart(report, os.path.join(output, "report.png"))
    return report


class ReportStep(PipelineStep):
    """The last stage (one task): writes the report once every earlier stage has finished."""

    type = "📝 - REPORT"
    name = "curate report"

    def __init__(self, output: str, stage_dirs: list[tuple[str, str]]) -> None:
        super().__init__()
        self.output = output
        self.stage_dirs = stage_dirs

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        # Timed, so that datatrove's stats of this stage give its runtime (not 0 seconds).
        with self.track_time():
            write_report(self.output, self.stage_dirs)
        return iter(())
