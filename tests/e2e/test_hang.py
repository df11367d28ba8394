"""The hang watchdog end to end: a rank that hangs ends the job, with every rank's stacks.

`chatbaker train` on 2 CPU ranks; rank 1 sleeps forever before iteration 2
(train.fault_injection). Rank 0 then blocks in that step's collectives, so
both stop completing steps: both watchdogs write their stacks to
<run_dir>/hangs/ and exit non-zero (restarts off here; they are
tests/e2e/test_restart.py's subject).
"""

from __future__ import annotations

import os
import subprocess

from chatbaker_megatron.training.watchdog import HANG_EXIT_CODE
from tests.e2e.test_launch import TRAIN, small_run

HANG_TIMEOUT_S = 8  # far above a tiny-model step on a busy CPU, so only the hang trips it


def test_hang_on_one_rank_dumps_every_rank_and_fails_the_job(data_root, tmp_path):
    run_dir = tmp_path / "run"
    args = [
        *TRAIN,
        f"run_dir={run_dir}",
        *small_run(data_root, 4),
        f"train.hang_timeout_s={HANG_TIMEOUT_S}",
        "train.fault_injection.hang_at_iteration=2",
        "train.fault_injection.rank=1",
        "launch.max_restarts=0",
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=240, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    stacks = {rank: (run_dir / "hangs" / f"rank_{rank}.txt").read_text() for rank in (0, 1)}
    for rank, dump in stacks.items():
        assert dump.startswith(f"rank {rank}: no progress for "), dump
        assert f"after a step (limit {HANG_TIMEOUT_S:g} s)" in dump
        assert "_loop" in dump  # the training loop's frame is in the dump
    assert "hang_forever" in stacks[1]  # the injected hang, where it sleeps
    assert "hang_forever" not in stacks[0]  # rank 0 waits in iteration 2's collectives
    assert f"exiting with code {HANG_EXIT_CODE}" in output
    assert not os.path.exists(run_dir / "checkpoints" / "iter_0000002")
