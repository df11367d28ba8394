"""The run's records on a resume: one metrics row and TensorBoard point per iteration."""

from __future__ import annotations

import json
from types import SimpleNamespace

from chatbaker_megatron.training.metrics import RERUN_FILE, MetricsLogger, set_aside_rerun_rows


def write_rows(path, rows: list[dict], torn: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn, encoding="utf-8")


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_rows_after_the_resumed_iteration_move_to_the_rerun_file(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"iteration": i, "loss": 10.0 - i} for i in range(1, 7)]
    rows.insert(4, {"iteration": 4, "valid_loss": 6.5})
    rows.insert(0, {"event": "no iteration"})
    write_rows(metrics, rows, torn='{"iteration": 7, "lo')

    assert set_aside_rerun_rows(str(metrics), 4) == 3

    assert read_rows(metrics) == [r for r in rows if r.get("iteration", 0) <= 4]
    rerun = (tmp_path / RERUN_FILE).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in rerun[:2]] == [
        {"iteration": 5, "loss": 5.0, "resumed_from": 4},
        {"iteration": 6, "loss": 4.0, "resumed_from": 4},
    ]
    assert rerun[2] == '{"iteration": 7, "lo'


def test_a_second_resume_appends_and_a_clean_file_is_left_alone(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    write_rows(metrics, [{"iteration": i} for i in (1, 2, 3)])
    assert set_aside_rerun_rows(str(metrics), 2) == 1
    write_rows(metrics, [{"iteration": i} for i in (1, 2, 3, 4)])
    assert set_aside_rerun_rows(str(metrics), 3) == 1
    assert [r["iteration"] for r in read_rows(tmp_path / RERUN_FILE)] == [3, 4]

    before = metrics.read_bytes()
    assert set_aside_rerun_rows(str(metrics), 3) == 0
    assert metrics.read_bytes() == before
    assert set_aside_rerun_rows(str(tmp_path / "absent.jsonl"), 0) == 0


def test_a_resumed_logger_rewrites_config_and_hides_rerun_tensorboard_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def attempt(start: int, config: dict, rows: range, offset: float) -> None:
        logger = MetricsLogger(
            str(tmp_path),
            enabled=True,
            tensorboard=True,
            wandb_cfg=SimpleNamespace(enabled=False),
            config=config,
            start_iteration=start,
        )
        for i in rows:
            logger.log({"iteration": i, "loss": offset + i})
        logger.close()

    attempt(0, {"seed": 1}, range(1, 6), 0.0)
    attempt(3, {"seed": 2}, range(4, 7), 100.0)

    assert (tmp_path / "config.yaml").read_text(encoding="utf-8") == "seed: 2\n"
    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 104.0), (5, 105.0), (6, 106.0)]
    assert [(r["iteration"], r["loss"]) for r in read_rows(tmp_path / "metrics.jsonl")] == expected
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == expected
