"""The Triton kernels lower to GPU code (sm_90) on this machine, GPU or not.

The interpreter runs the kernels' logic on CPU but never compiles them; this
compiles the bf16 variants for real, in a child process without
TRITON_INTERPRET (the full matrix for sm_80 and sm_90 runs in
scripts/check-cuda.sh).
"""

from __future__ import annotations

import os
import subprocess
import sys


def test_triton_kernels_compile_for_hopper():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "chatbaker_kernels.compile_check", "--quick", "--arch", "90"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert ", 0 failed" in result.stdout
