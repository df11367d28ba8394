"""Run lm-evaluation-harness (its Python API, `HFLM`) on a Hugging Face model folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatbaker_megatron.eval.suites import TaskSpec

# lm-eval's result keys are "<metric>,<filter>"; every task here uses no filter.
FILTER = "none"


@dataclass(frozen=True)
class TaskResult:
    task: str
    family: str
    metrics: dict[str, float]  # metric -> value
    stderrs: dict[str, float | None]
    samples: int  # documents evaluated


def _task_result(spec: TaskSpec, raw: dict[str, Any], samples: dict[str, Any]) -> TaskResult:
    if spec.name not in raw:
        raise RuntimeError(f"lm-eval returned no results for task {spec.name!r}")
    metrics, stderrs = {}, {}
    for key, value in raw[spec.name].items():
        name, _, filt = key.partition(",")
        if filt != FILTER or name.endswith("_stderr") or not isinstance(value, int | float):
            continue
        metrics[name] = float(value)
        stderr = raw[spec.name].get(f"{name}_stderr,{FILTER}")
        stderrs[name] = float(stderr) if isinstance(stderr, int | float) else None
    counts = samples.get(spec.name) or {}
    return TaskResult(spec.name, spec.family, metrics, stderrs, int(counts.get("effective", 0)))


def run_lm_eval(
    hf_dir: str | Path,
    tasks: list[TaskSpec],
    *,
    limit: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
    seed: int = 1234,
) -> tuple[list[TaskResult], dict[str, Any]]:
    """Zero-shot lm-eval on the folder; returns per-task results and lm-eval's config record."""
    from lm_eval.models.huggingface import HFLM

    from chatbaker_megatron import platform

    hf_dir = Path(hf_dir).expanduser()
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{hf_dir}: no config.json (export a checkpoint with `chatbaker export-hf`)"
        )
    device = device or str(platform.detect().device)
    # lm-eval logs every request batch at INFO.
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    model = HFLM(pretrained=str(hf_dir), dtype="float32", batch_size=batch_size, device=device)
    return evaluate(model, tasks, limit=limit, seed=seed)


def evaluate(
    model: Any, tasks: list[TaskSpec], *, limit: int | None, seed: int
) -> tuple[list[TaskResult], dict[str, Any]]:
    """Zero-shot lm-eval of any lm-eval model (HFLM, or local-completions against a server)."""
    from lm_eval import simple_evaluate

    output = simple_evaluate(
        model=model,
        tasks=[spec.config for spec in tasks],
        num_fewshot=0,
        limit=limit,
        log_samples=False,
        bootstrap_iters=1000,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if output is None:
        raise RuntimeError("lm-eval returned no results")
    raw, samples = output["results"], output.get("n-samples", {})
    return [_task_result(spec, raw, samples) for spec in tasks], {
        "lm_eval_version": output.get("lm_eval_version"),
        "transformers_version": output.get("transformers_version"),
        "limit": limit,
        "num_fewshot": 0,
        "seed": seed,
    }
