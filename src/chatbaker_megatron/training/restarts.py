"""What an in-job restart cost: torchrun's restart counter and the iterations lost.

torchrun (launch.max_restarts) restarts every rank when one dies and tells
the new ranks how many times it has done so (TORCHELASTIC_RESTART_COUNT).
The iteration the job had reached is the last one in metrics.jsonl, read
before this attempt logs anything; the run resumed from its newest complete
checkpoint, so the difference is the work lost (up to
logging.log_interval - 1 more iterations may have run unlogged).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

RESTART_COUNT_ENV = "TORCHELASTIC_RESTART_COUNT"


def restart_count() -> int:
    return int(os.environ.get(RESTART_COUNT_ENV, "0"))


def last_logged_iteration(run_dir: str) -> int | None:
    """The highest iteration of a training step in `<run_dir>/metrics.jsonl`, if any."""
    last = None
    with (
        contextlib.suppress(FileNotFoundError),
        open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f,
    ):
        for line in f:
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if "loss" in row:
                    last = max(last or 0, int(row["iteration"]))
    return last


def restart_event(run_dir: str, resumed_from: int) -> dict[str, Any] | None:
    """The metrics row of an in-job restart (None on the job's first attempt)."""
    count = restart_count()
    if count == 0:
        return None
    reached = last_logged_iteration(run_dir)
    reached = resumed_from if reached is None else max(reached, resumed_from)
    return {
        "iteration": resumed_from,
        "event": "restart",
        "restarts": count,
        "last_iteration": reached,
        "iterations_lost": reached - resumed_from,
    }
