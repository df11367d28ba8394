"""The preference-tuning presets: valid, planned with the reference model counted, dry-run = plan."""

from __future__ import annotations

import re

import pytest

from chatbaker_megatron.cli import main
from chatbaker_megatron.config.compose import compose
from tests.support.forkserver import run_cli

PRESETS = {"dpo_1.3b_a100x8": 2.68, "dpo_7b_a100x8": 6.42}  # a frozen copy's GiB per rank


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_plans_and_counts_the_reference(preset, capsys):
    cfg = compose([f"experiment={preset}"])
    assert cfg.data.kind == "preference" and cfg.train.preference.loss == "dpo"
    assert cfg.train.seq_length == 4096 and cfg.cluster.world_size == 8
    assert main(["plan", f"experiment={preset}", "--top", "3"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    line = re.search(r"reference model: forward-only pre-pass, no copy in memory.*?epoch", out)
    assert line, out
    assert f"would add {PRESETS[preset]:.2f} GiB per rank" in line.group(0)


def test_dry_run_equals_the_plan_and_names_the_frozen_copy():
    result = run_cli(
        ["train", "experiment=dpo_1.3b_a100x8", "--dry-run", "--ranks", "0"],
        600,
        ignore_warnings=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "= plan" in result.stdout
    assert "a frozen copy sharded like the policy would add 2.68 GiB per rank" in result.stdout
