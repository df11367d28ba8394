"""Evaluation: task resolution, macro F1, the report, and export -> lm-eval -> table on local samples."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from chatbaker_megatron.cli import main as cli_main
from chatbaker_megatron.eval.metrics import macro_f1
from chatbaker_megatron.eval.references import KOBEST_MACRO_F1_AVERAGE
from chatbaker_megatron.eval.report import write_report
from chatbaker_megatron.eval.runner import TaskResult
from chatbaker_megatron.eval.suites import (
    HUB_SUITES,
    load_local_task,
    local_task_files,
    resolve_tasks,
)


def test_macro_f1_matches_scikit_learn():
    from sklearn.metrics import f1_score

    rng = random.Random(0)
    for classes in (2, 4):
        items = [(rng.randrange(classes), rng.randrange(classes)) for _ in range(40)]
        golds, preds = zip(*items)
        assert macro_f1(items) == pytest.approx(f1_score(golds, preds, average="macro"))
    # A class never predicted scores 0 and still counts in the average.
    assert macro_f1([(0, 0), (1, 0)]) == pytest.approx((2 / 3 + 0) / 2)


def test_suites_expand_and_local_tasks_resolve():
    tasks = resolve_tasks("kobest, kobest_local,arc_easy,kobest_boolq")
    names = [t.name for t in tasks]
    assert names[:5] == HUB_SUITES["kobest"] and names.count("kobest_boolq") == 1
    assert names[5:10] == [f"{n}_local" for n in HUB_SUITES["kobest"]]
    assert names[-1] == "arc_easy" and tasks[-1].family == "english"
    local = tasks[5].config
    assert isinstance(local, dict) and local["task"] == "kobest_boolq_local"
    assert callable(local["metric_list"][1]["aggregation"])
    data_file = local["dataset_kwargs"]["data_files"]["test"]
    assert data_file.startswith("/") and data_file.endswith("kobest_boolq.jsonl")
    english = [t for t in resolve_tasks("english_local") if t.family == "english"]
    assert len(english) == 11


def test_every_local_task_has_its_samples():
    files = local_task_files()
    assert len(files) == 16
    for path in files.values():
        config = load_local_task(path)
        assert config["output_type"] == "multiple_choice"
        data = Path(config["dataset_kwargs"]["data_files"]["test"])
        lines = data.read_text(encoding="utf-8").splitlines()
        assert all(json.loads(line) for line in lines) and len(lines) >= 4


def test_missing_sample_file_is_named(tmp_path):
    (tmp_path / "broken_local.yaml").write_text(
        "task: broken_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: gone.jsonl\n"
    )
    with pytest.raises(FileNotFoundError, match=r"data_files\.test -> .*gone\.jsonl is missing"):
        load_local_task(tmp_path / "broken_local.yaml")


def test_report_averages_and_references(tmp_path):
    results = [
        TaskResult("kobest_boolq", "kobest", {"acc": 0.6, "f1": 0.5}, {"acc": 0.1, "f1": None}, 10),
        TaskResult("kobest_copa", "kobest", {"acc": 0.7, "f1": 0.7}, {"acc": 0.1, "f1": None}, 10),
        TaskResult("piqa", "english", {"acc": 0.55, "acc_norm": 0.6}, {"acc": 0.05}, 10),
    ]
    paths = write_report(
        tmp_path, "tiny", results, {"lm_eval_version": "x", "limit": None, "seed": 1}
    )
    record = json.loads(paths["json"].read_text())
    assert record["averages"]["kobest"] == {"metric": "f1", "value": pytest.approx(0.6), "tasks": 2}
    assert record["averages"]["english"]["value"] == pytest.approx(0.55)
    table = paths["markdown"].read_text()
    assert "| KoBEST (2 tasks) | macro F1 | 0.6000 | 0.549 | 0.539 | 0.504 |" in table
    assert "| kobest | kobest_copa | macro F1 | 0.7000 | n/a | 10 |" in table
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_cli_runs_lm_eval_on_an_export(exported, tmp_path, capsys):
    pytest.importorskip("accelerate", reason="lm-eval's HFLM needs accelerate (the eval extra)")
    out = tmp_path / "report"
    code = cli_main(
        [
            "eval",
            "--hf",
            str(exported("tp1")),
            "--tasks",
            "kobest_local,english_local",
            "--limit",
            "3",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    rows = {row["task"]: row for row in record["rows"]}
    assert len(rows) == 16 and record["local_samples"]
    for name in HUB_SUITES["kobest"]:
        row = rows[f"{name}_local"]
        assert row["metric"] == "f1" and 0.0 <= row["value"] <= 1.0 and row["samples"] == 3
    assert rows["winogrande_local"]["metric"] == "acc"
    assert record["averages"]["kobest"]["tasks"] == 5
    assert record["references"]["kobest_macro_f1_average"] == KOBEST_MACRO_F1_AVERAGE
    table = (out / "results.md").read_text()
    assert "42dot-PLM-1.3B" in table and "not comparable" in table
    assert (out / "results.png").stat().st_size > 1000
    assert "KoBEST (5 tasks)" in capsys.readouterr().out
