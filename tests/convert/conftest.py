"""Fixtures shared by the convert, inference and eval tests (their conftests import them).

Artefacts are built once per session (tiny.once), whichever directory's test asks first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.convert import tiny

# Nothing in these tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.once(
        "tokenizer", lambda: tiny.make_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tokenizer")
    )


@pytest.fixture(scope="session")
def layout_checkpoint(
    ranks, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], tuple[torch.Tensor, Path]]:
    """layout -> (our logits at that layout, its checkpoints dir), random weights saved by training's code."""

    def build(layout: str) -> tuple[torch.Tensor, Path]:
        world, cfg = tiny.LAYOUTS[layout]
        run_dir = tmp_path_factory.mktemp(f"run-{layout}")
        config = tiny.run_config(
            tokenizer_dir, run_dir, "sft" if layout.endswith("_sft") else "pretrain"
        )
        root = run_dir / "checkpoints"
        results = ranks.run(world, tiny.save_random_checkpoint_on_ranks, cfg, str(root), config)
        return tiny.last_stage([r["logits"] for r in results]), root

    return lambda layout: tiny.once(f"checkpoint-{layout}", lambda: build(layout))


@pytest.fixture(scope="session")
def exported(layout_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """layout -> the HF folder exported from that layout's checkpoint."""
    from chatbaker_megatron.convert.export_hf import export_hf

    def build(layout: str) -> Path:
        _, root = layout_checkpoint(layout)
        out = tmp_path_factory.mktemp(f"hf-{layout}") / "hf"
        export_hf(root, out, progress=False)
        return out

    return lambda layout: tiny.once(f"hf-{layout}", lambda: build(layout))
