"""`chatbaker` verbs hide the known third-party notices (notices.py); `--verbose` shows them.

`export-hf --verify` on the tiny checkpoint meets most of them: megatron's
import-time notices (Transformer Engine/Apex, the CUDA-graph scope), the
GPTModel deprecation, torch.distributed.checkpoint's single-process notices,
and, on a GPU-less machine with a CUDA toolkit, torch's "No CUDA runtime".
`generate --hf` meets transformers' own. Both load a model with transformers, which
draws a "Loading weights" bar; `chatbaker train`'s torchrun announces the
OMP_NUM_THREADS it would pick.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chatbaker_megatron import notices

# Emitted by every export-hf --verify on any machine (the rest depend on what is installed).
ALWAYS_EMITTED = (
    "GPTModel IS DEPRECATED",
    "full scope is deprecated",
    "torch.distributed is disabled, unavailable or uninitialized",
    "The argument order of load has been changed",
)
KNOWN = [n.message for n in notices.WARNED] + [n.message for n in notices.LOGGED]


def _chatbaker(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # As a user's shell has them: the suite's process may have set HF_BARS_ENV itself.
    env = {
        k: v for k, v in os.environ.items() if k not in (notices.VERBOSE_ENV, notices.HF_BARS_ENV)
    }
    done = subprocess.run(
        [sys.executable, "-m", "chatbaker_megatron.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _known_notices_in(text: str) -> list[str]:
    return [m for m in KNOWN if re.search(m, text, re.MULTILINE)]


@pytest.fixture(scope="module")
def checkpoints(layout_checkpoint) -> Path:
    return layout_checkpoint("tp1")[1]


def test_verbs_print_no_known_notices(checkpoints: Path, tmp_path):
    export = _chatbaker(
        "export-hf", "--checkpoint", str(checkpoints), "--output", "hf", "--verify",
        "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert "verify ok" in export.stdout
    generate = _chatbaker(
        "generate", "--hf", "hf", "--prompt", "hello", "--max-new-tokens", "3", "--greedy",
        cwd=tmp_path,
    )  # fmt: skip
    for done in (export, generate):
        assert _known_notices_in(done.stderr) == [], done.stderr[-3000:]
        assert "Warning" not in done.stderr, done.stderr[-3000:]
        assert "Loading weights" not in done.stderr, done.stderr[-3000:]


def test_verbose_shows_them(checkpoints: Path, tmp_path):
    export = _chatbaker(
        "--verbose", "export-hf", "--checkpoint", str(checkpoints), "--output", "hf",
        "--verify", "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert "verify ok" in export.stdout
    assert [text for text in ALWAYS_EMITTED if text not in export.stderr] == []
    assert "Loading weights" in export.stderr


def test_torchrun_of_several_ranks_prints_no_omp_banner(tmp_path):
    """torchrun announces the OMP_NUM_THREADS it picks when none is set; the launcher sets it."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = (
        "import sys; from chatbaker_megatron.launch import run_torchrun; "
        "sys.exit(run_torchrun(1, 2, 'this', [], max_restarts=0, monitor_interval=0.2))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Beautiful is better than ugly.") == 2  # both ranks ran
    assert "OMP_NUM_THREADS" not in done.stdout + done.stderr


def test_the_ranks_omp_threads_are_torchruns_choice_and_a_users_value_wins():
    from chatbaker_megatron.launch import rank_env

    assert rank_env({}, nproc_per_node=2)["OMP_NUM_THREADS"] == "1"
    assert rank_env({"OMP_NUM_THREADS": "8"}, nproc_per_node=2)["OMP_NUM_THREADS"] == "8"
    # One rank a node: torch's own default (all cores), as torchrun leaves it.
    assert "OMP_NUM_THREADS" not in rank_env({}, nproc_per_node=1)


def test_every_notice_says_who_and_why_and_fits_a_pytest_filter_line():
    for notice in (*notices.WARNED, *notices.LOGGED):
        assert notice.source and notice.why, notice
        re.compile(notice.message)
    # tests/conftest.py passes them to pytest as "ignore:MESSAGE:CATEGORY:MODULE".
    assert [n for n in notices.WARNED if ":" in n.message + n.module] == []
