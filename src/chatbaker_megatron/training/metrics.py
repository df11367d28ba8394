"""Training metrics: metrics.jsonl, TensorBoard, W&B, and the progress log line.

Only rank 0 writes. Throughput figures are computed, never assumed:
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

log = logging.getLogger(__name__)


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


class MetricsLogger:
    """Writes one record per logged step; a no-op on ranks other than 0."""

    def __init__(
        self, run_dir: str, *, enabled: bool, tensorboard: bool, wandb_cfg: Any, config: dict
    ):
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self._jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
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
        if not self.enabled:
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
    return (
        f"iter {record['iteration']:>6d}/{total} | loss {record['loss']:.4f} | "
        f"lr {record['lr']:.3e} | grad norm {grad_norm if grad_norm is None else f'{grad_norm:.3f}'} | "
        f"{record['tokens_per_s']:,.0f} tok/s ({record['tokens_per_s_per_device']:,.0f}/device) | "
        f"{record['tflops_per_device']:.2f} TFLOP/s/device | MFU {100 * record['mfu']:.1f}% | "
        f"mem {record['memory_gib']:.2f} GiB | skipped {record['skipped_steps']} | ETA {eta}"
    )
