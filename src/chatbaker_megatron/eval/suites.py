"""Which lm-evaluation-harness tasks `chatbaker eval --tasks` runs, and the local sample tasks.

--tasks takes a comma-separated list of
- suite names: `kobest` and `english` (lm-eval's own tasks, which download
  their datasets from the Hugging Face hub), `kobest_local` and
  `english_local` (the samples shipped in eval/tasks/, nothing downloads);
- local task names (`kobest_boolq_local`, ...), or any lm-eval task name.

Local tasks are lm-eval task YAMLs (`dataset_path: json`, `data_files`
relative to the YAML) in eval/tasks/<suite>/. They are loaded here rather
than by lm-eval's TaskManager so that `data_files` can be made absolute and
the `macro_f1` aggregation name can be bound (eval/metrics.py); they are
then handed to lm-eval as task config dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chatbaker_megatron.eval.metrics import AGGREGATIONS

TASKS_DIR = Path(__file__).parent / "tasks"
LOCAL_SUITES = ("kobest_local", "english_local")

# The task lists of the ChatBaker evaluation (see docs/eval.md).
HUB_SUITES = {
    "kobest": ["kobest_boolq", "kobest_copa", "kobest_hellaswag", "kobest_sentineg", "kobest_wic"],
    "english": [
        "anli_r1",
        "anli_r2",
        "anli_r3",
        "arc_easy",
        "arc_challenge",
        "boolq",
        "hellaswag",
        "openbookqa",
        "piqa",
        "record",
        "rte",
        "truthfulqa_mc1",
        "truthfulqa_mc2",
        "wic",
        "winogrande",
    ],
}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: str  # "kobest" | "english" | "other": how the report groups and averages it
    config: str | dict[str, Any]  # what lm-eval gets: a task name, or a local task config


def _family(name: str, local: dict[str, Path]) -> str:
    if name in local:
        return local[name].parent.name.removesuffix("_local")
    for family, members in HUB_SUITES.items():
        if name in members:
            return family
    return "other"


def local_task_files() -> dict[str, Path]:
    """Local task name -> its YAML file."""
    files = {}
    for suite in LOCAL_SUITES:
        for path in sorted((TASKS_DIR / suite).glob("*.yaml")):
            files[path.stem] = path
    return files


def load_local_task(path: Path) -> dict[str, Any]:
    """A local task YAML as an lm-eval task config, with absolute data files and bound aggregations."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict) or config.get("task") != path.stem:
        raise ValueError(f"{path}: expected a task config whose `task` is {path.stem!r}")
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if config.get("dataset_path") != "json" or not isinstance(files, dict):
        raise ValueError(f"{path}: expected dataset_path: json and dataset_kwargs.data_files")
    resolved = {}
    for split, name in files.items():
        data = path.parent / name
        if not data.is_file():
            raise FileNotFoundError(f"{path}: data_files.{split} -> {data} is missing")
        resolved[split] = str(data)
    config["dataset_kwargs"] = {**config["dataset_kwargs"], "data_files": resolved}
    for metric in config.get("metric_list", []):
        aggregation = metric.get("aggregation")
        if isinstance(aggregation, str) and aggregation in AGGREGATIONS:
            metric["aggregation"] = AGGREGATIONS[aggregation]
    return config


def resolve_tasks(spec: str) -> list[TaskSpec]:
    """The tasks a --tasks value names, in order, each once."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--tasks={spec!r}: name at least one task or suite")
    local = local_task_files()
    expanded: list[str] = []
    for name in names:
        if name in HUB_SUITES:
            expanded += HUB_SUITES[name]
        elif name in LOCAL_SUITES:
            expanded += [n for n, p in local.items() if p.parent.name == name]
        else:
            expanded.append(name)
    tasks, seen = [], set()
    for name in expanded:
        if name in seen:
            continue
        seen.add(name)
        config = load_local_task(local[name]) if name in local else name
        tasks.append(TaskSpec(name, _family(name, local), config))
    return tasks
