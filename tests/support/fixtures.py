"""Session fixtures of the tiny model's artefacts, for the convert, inference and eval tests.

Registered for the whole suite by `pytest_plugins` in tests/conftest.py, so each
artefact is built once per session, by whichever test asks first.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.support import tiny_checkpoints

# Nothing in these tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoints.make_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tokenizer")


@pytest.fixture(scope="session")
def layout_checkpoint(
    ranks, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], tuple[torch.Tensor, Path]]:
    """layout -> (our logits at that layout, its checkpoints dir), random weights saved by training's code."""

    @functools.cache
    def build(layout: str) -> tuple[torch.Tensor, Path]:
        world, cfg = tiny_checkpoints.LAYOUTS[layout]
        run_dir = tmp_path_factory.mktemp(f"run-{layout}")
        config = tiny_checkpoints.run_config(
            tokenizer_dir, run_dir, "sft" if layout.endswith("_sft") else "pretrain"
        )
        root = run_dir / "checkpoints"
        results = ranks.run(
            world, tiny_checkpoints.save_random_checkpoint_on_ranks, cfg, str(root), config
        )
        return tiny_checkpoints.last_stage([r["logits"] for r in results]), root

    return build


@pytest.fixture(scope="session")
def exported(layout_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """layout -> the HF folder exported from that layout's checkpoint."""
    from chatbaker_megatron.convert.export_hf import export_hf

    @functools.cache
    def build(layout: str) -> Path:
        _, root = layout_checkpoint(layout)
        out = tmp_path_factory.mktemp(f"hf-{layout}") / "hf"
        export_hf(root, out, progress=False)
        return out

    return build
