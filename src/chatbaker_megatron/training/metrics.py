"""The run's records: config.yaml, metrics.jsonl, TensorBoard, W&B, and the progress line.

Only rank 0 writes, and only once the run has started (after the resume
checks), so a refused resume leaves the run dir as it was. A resume from
iteration N re-runs the iterations after N: their rows from the earlier
attempt move to metrics.rerun.jsonl, so metrics.jsonl keeps one row per
iteration (the ones this history produced), and TensorBoard drops its events
after N (`purge_step`). Throughput figures are computed, never assumed:
- tokens/s = global batch * seq length * steps / wall seconds (all tokens the
  model processed, padding included);
- TFLOP/s per device = model FLOPs per token (model/sizes.py, no recompute) *
  tokens/s / world size;
- MFU = TFLOP/s per device / the cluster config's stated peak.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from chatbaker_megatron.atomic_files import replace_file

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
RERUN_FILE = "metrics.rerun.jsonl"


@dataclass
class Throughput:
    tokens_per_step: int
    flops_per_token: float
    world_size: int
    peak_tflops: float

    def figures(self, steps: int, seconds: float) -> dict[str, float]:
        tokens_per_s = self.tokens_per_step * steps / seconds
        tflops = self.flops_per_token * tokens_per_s / self.world_size / 1e12
        return {
            "step_time_s": seconds / steps,
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_device": tokens_per_s / self.world_size,
            "tflops_per_device": tflops,
            "mfu": tflops / self.peak_tflops,
        }


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def set_aside_rerun_rows(path: str, start_iteration: int) -> int:
    """Move rows of iterations after `start_iteration` from `path` to metrics.rerun.jsonl.

    Called when a run (re)starts at `start_iteration`: those iterations are
    about to run again, so the earlier attempt's rows are kept apart, each
    marked `resumed_from`, instead of appearing twice. Rows without an
    iteration stay; a torn line (a writer killed mid-row) moves as it is.
    Returns the number of rows moved.
    """
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    kept, moved = [], []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            moved.append(line)
            continue
        iteration = record.get("iteration") if isinstance(record, dict) else None
        if iteration is not None and iteration > start_iteration:
            moved.append(json.dumps({**record, "resumed_from": start_iteration}))
        else:
            kept.append(line)
    if not moved:
        return 0
    # Appended before the rewrite: a crash in between duplicates rows in
    # the rerun file at worst, never loses one.
    with open(os.path.join(os.path.dirname(path), RERUN_FILE), "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in moved))
        f.flush()
        os.fsync(f.fileno())
    replace_file(path, "".join(line + "\n" for line in kept))
    return len(moved)


class MetricsLogger:
    """Writes config.yaml and one record per logged step; a no-op on ranks other than 0.

    Create it once the run has started at `start_iteration` (0, or the
    iteration resumed from): it rewrites config.yaml and sets aside the rows
    of iterations about to be re-run.
    """

    def __init__(
        self,
        run_dir: str,
        *,
        enabled: bool,
        tensorboard: bool,
        wandb_cfg: Any,
        config: dict,
        start_iteration: int,
    ):
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        replace_file(os.path.join(run_dir, "config.yaml"), OmegaConf.to_yaml(config))
        metrics_path = os.path.join(run_dir, METRICS_FILE)
        moved = set_aside_rerun_rows(metrics_path, start_iteration)
        if moved:
            log.info(
                "%s: %d rows of iterations after %d (re-run from there) moved to %s",
                metrics_path,
                moved,
                start_iteration,
                RERUN_FILE,
            )
        self._jsonl = open(metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # Hides the earlier attempt's events after start_iteration, as above.
            self._tb = SummaryWriter(
                os.path.join(run_dir, "tensorboard"), purge_step=start_iteration + 1
            )
        if wandb_cfg.enabled:
            import wandb

            self._wandb = wandb.init(
                project=wandb_cfg.project,
                mode=wandb_cfg.mode,
                dir=run_dir,
                config=config,
                resume="allow",
            )

    def log(self, record: dict[str, Any]) -> None:
        if self._jsonl is None:  # not enabled
            return
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        step = record["iteration"]
        if self._tb is not None:
            for key, value in record.items():
                if key != "iteration" and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(record, step=step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class ProgressClock:
    """Wall time per logging window and the ETA of the run."""

    def __init__(self, start_iteration: int, total_iterations: int) -> None:
        self.total = total_iterations
        self._window_start = time.perf_counter()
        self._window_iteration = start_iteration
        self._run_start = self._window_start
        self._run_start_iteration = start_iteration

    def window(self, iteration: int) -> tuple[int, float]:
        """(steps, seconds) since the last call; starts a new window."""
        now = time.perf_counter()
        steps, seconds = iteration - self._window_iteration, now - self._window_start
        self._window_start, self._window_iteration = now, iteration
        return steps, seconds

    def eta(self, iteration: int) -> str:
        done = iteration - self._run_start_iteration
        if done <= 0:
            return "?"
        per_step = (time.perf_counter() - self._run_start) / done
        return _format_duration(per_step * (self.total - iteration))


def progress_line(record: dict[str, Any], total: int, eta: str) -> str:
    grad_norm = record.get("grad_norm")
    overflows = record.get("skipped_overflows")
    overflow_note = f" (+{overflows} fp16 overflows)" if overflows else ""
    return (
        f"iter {record['iteration']:>6d}/{total} | loss {record['loss']:.4f} | "
        f"lr {record['lr']:.3e} | grad norm {grad_norm if grad_norm is None else f'{grad_norm:.3f}'} | "
        f"{record['tokens_per_s']:,.0f} tok/s ({record['tokens_per_s_per_device']:,.0f}/device) | "
        f"{record['tflops_per_device']:.2f} TFLOP/s/device | MFU {100 * record['mfu']:.1f}% | "
        f"mem {record['memory_gib']:.2f} GiB | skipped {record['skipped_steps']}"
        f"{overflow_note} | ETA {eta}"
    )
