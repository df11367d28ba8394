"""The wheel is the whole project: every module, config, demo sample and eval task file.

It builds without a warning, and installed outside the working tree
(tests/support/scratch_install.py) its `chatbaker` command resolves the Hydra
config from any directory. About 15 s (a wheel build), so it runs with the
rest of `make test`.
"""

from __future__ import annotations

import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.support.scratch_install import ROOT, build_wheel, install, scratch_python

# Source folder -> where its files land in the wheel.
SHIPPED = {
    ROOT / "src" / "chatbaker_megatron": "chatbaker_megatron",
    ROOT / "conf": "chatbaker_megatron/conf",
    ROOT / "kernels": "chatbaker_kernels",
}


def _tree_files() -> set[str]:
    """The wheel paths of every file in the shipped source folders."""
    return {
        f"{prefix}/{path.relative_to(folder).as_posix()}"
        for folder, prefix in SHIPPED.items()
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return build_wheel(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def wheel(built: tuple[Path, str]) -> Path:
    return built[0]


def test_the_build_prints_nothing(built: tuple[Path, str]):
    """No setuptools warnings: every package and data file is declared (setup.py, pyproject)."""
    assert built[1] == ""


def test_wheel_holds_every_source_file(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _tree_files() - names
    assert not missing, f"not in the wheel: {sorted(missing)}"
    for kind in ("conf/model/", "demo/samples/", "eval/tasks/kobest_local/"):
        assert any(kind in name for name in names), kind


def test_installed_wheel_composes_the_config_from_another_directory(wheel: Path, tmp_path):
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    install(site, wheel)
    elsewhere.mkdir()
    # The dependencies from this venv; chatbaker_megatron only from the wheel
    # (-S leaves out the venv's editable install of the working tree).
    path = [site, Path(sysconfig.get_paths()["purelib"])]

    where = scratch_python(
        path, "-c", "import chatbaker_megatron.conf as c; print(c.__file__)", cwd=elsewhere
    )
    assert where.returncode == 0, where.stderr[-3000:]
    assert where.stdout.strip().startswith(str(site))

    # The console script the wheel declares, as a user runs it.
    job = scratch_python(
        path, str(site / "bin" / "chatbaker"), "train", "--cfg", "job", cwd=elsewhere
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert "model:" in job.stdout and "hidden_size:" in job.stdout
    assert not list(elsewhere.iterdir())
