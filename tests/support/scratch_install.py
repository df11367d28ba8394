"""The project installed outside the working tree, as a user or the GPU machine gets it.

Packaging tests install the wheel (built from a clean copy of the sources: an
in-tree build would reuse what earlier builds left in build/) or the source
tree (as scripts/gpu_check.py does) with `pip --target` into a scratch folder,
then run Python with `-S`: no site-packages, so neither the working tree's
editable install nor anything else is importable but the folders named on
PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What setup.py and pyproject.toml build the wheel from (the Dockerfile copies the same).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "src", "kernels", "conf")
PIP_INSTALL = [
    sys.executable, "-m", "pip", "install", "-q",
    "--no-index", "--no-deps", "--no-compile", "--no-build-isolation",
]  # fmt: skip


def build_wheel(out_dir: Path) -> tuple[Path, str]:
    """`pip wheel` of the working tree's sources without the CUDA extension: the wheel,
    and what the build printed (setuptools' warnings)."""
    source = out_dir / "source"
    source.mkdir(parents=True)
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*pip_wheel, "-w", str(out_dir), str(source)],
        env=dict(os.environ, CHATBAKER_BUILD_CUDA="0"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out_dir.glob("chatbaker_megatron-*.whl")
    return wheel, done.stdout + done.stderr


def install(target: Path, *sources: Path) -> None:
    """pip-install wheels or source trees (without the CUDA extension) into the folder `target`."""
    subprocess.run(
        [*PIP_INSTALL, "--target", str(target), *map(str, sources)],
        env=dict(os.environ, CHATBAKER_BUILD_CUDA="0"),
        check=True,
        timeout=300,
    )


def scratch_python(
    path: list[Path], *args: str, cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess:
    """`python -S ARGS` in `cwd`, importing only from the folders `path`."""
    return subprocess.run(
        [sys.executable, "-S", *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, path))),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
