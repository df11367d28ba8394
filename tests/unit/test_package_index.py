"""Every package's `__init__` docstring is its index: one line per module and subpackage,
each starting with its file name (`name.py`, `name/`), and nothing listed that is not there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = (REPO / "src" / "chatbaker_megatron", REPO / "kernels")
PACKAGES = sorted(init.parent for root in ROOTS for init in root.rglob("__init__.py"))
# A line of the index: optional indent and "- ", the name (maybe in backticks), then a
# space, a colon or the end of the line.
ENTRY = re.compile(r"^\s*(?:-\s+)?`?(\w+(?:\.py|/))`?(?=[\s:]|$)", re.MULTILINE)


def modules_of(package: Path) -> set[str]:
    """The package's modules and subpackages, as the index names them."""
    files = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    return files | {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()}


@pytest.mark.parametrize("package", PACKAGES, ids=[str(p.relative_to(REPO)) for p in PACKAGES])
def test_the_init_docstring_lists_every_module_and_nothing_else(package: Path):
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text("utf-8"))) or ""
    listed = set(ENTRY.findall(docstring))
    missing = sorted(modules_of(package) - listed)
    assert not missing, f"not in the index: {missing}"
    # Data folders (samples/, static/, csrc/) may be listed too, if they exist.
    absent = sorted(n for n in listed if not (package / n.rstrip("/")).exists())
    assert not absent, f"listed but not in the package: {absent}"
