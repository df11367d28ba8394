"""Import: a transformers-created random LLaMA, imported at TP2 or PP2, gives transformers' logits.

The imported checkpoint is loaded by training's own load_checkpoint (as
`train.init_from` does), so the test also pins the checkpoint format to
what training reads; its layout and common state are those of a checkpoint
training saved.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import torch

from chatbaker_megatron.checkpoint.layout import latest_checkpoint
from chatbaker_megatron.checkpoint.state import TrainState, read_common
from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.convert.import_hf import import_hf
from tests.support import tiny_checkpoints as tiny

LOGIT_ATOL = 2e-5


def import_then_logits_on_ranks(
    hf_dir: str, output: str, cfg: ParallelConfig
) -> torch.Tensor | None:
    tiny.import_on_ranks(hf_dir, output, cfg.tp, cfg.pp)
    return tiny.load_checkpoint_logits_on_ranks(cfg, output)


@pytest.fixture(scope="module")
def random_hf(tokenizer_dir, tmp_path_factory):
    return tiny.random_hf_model(tmp_path_factory.mktemp("random-llama"), tokenizer_dir)


@pytest.mark.parametrize(
    "cfg",
    [ParallelConfig(tp=2), ParallelConfig(pp=2, vpp=2), ParallelConfig(tp=2, pp=2)],
    ids=["tp2", "pp2_loaded_with_vpp2", "tp2_pp2"],
)
def test_imported_model_gives_transformers_logits(ranks, random_hf, cfg, tmp_path):
    output = tmp_path / "imported"
    world = cfg.tp * cfg.pp
    ours = tiny.last_stage(
        ranks.run(world, import_then_logits_on_ranks, str(random_hf), str(output), cfg)
    )
    theirs = tiny.hf_logits(random_hf, tiny.tokens())
    diff = (ours[..., : tiny.VOCAB] - theirs).abs().max().item()
    print(f"\nimport parity {cfg.tp=} {cfg.pp=} {cfg.vpp=}: max |logits diff| = {diff:.3e}")
    assert diff < LOGIT_ATOL
    assert (output / "latest").read_text().strip() == "iter_0000000"
    assert (output / "tokenizer" / "tokenizer.json").is_file()


def import_recording_fsyncs(hf_dir: str, output: str) -> list[str]:
    """Import at TP1 on this rank; the names of the files it fsynced."""
    synced: list[str] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    os.fsync = recording_fsync
    try:
        tiny.import_on_ranks(hf_dir, output, 1, 1)
    finally:
        os.fsync = fsync
    return synced


def test_imported_checkpoint_is_laid_out_as_training_saves(
    ranks, random_hf, layout_checkpoint, tmp_path
):
    """One writer for both: same directories, same common state, an fsynced `latest`."""
    output = tmp_path / "imported"
    (synced,) = ranks.run(1, import_recording_fsyncs, str(random_hf), str(output))
    _, trained_root = layout_checkpoint("tp1")
    imported = read_common(latest_checkpoint(str(output)))
    trained = read_common(latest_checkpoint(str(trained_root)))

    assert ".latest.tmp" in synced, "`latest` is written through the fsynced marker"
    assert sorted(os.listdir(output)) == ["iter_0000000", "latest", "tokenizer"]
    assert sorted(os.listdir(trained_root)) == ["iter_0000007", "latest"]
    training_only = {"optimizer", "scheduler", "optimizer_format"}
    assert set(imported) == set(trained) - training_only | {"provenance"}
    assert imported["optimizer_kind"] is None and trained["optimizer_kind"] == "local"
    assert imported["topology"] == trained["topology"] == {"tp": 1, "pp": 1, "dp": 1, "vpp": 1}
    assert imported["train_state"] == dataclasses.asdict(TrainState())
    assert imported["config"]["model"]["num_layers"] == trained["config"]["model"]["num_layers"]


def test_config_errors_name_file_and_field(random_hf, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(random_hf, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    with pytest.raises(ValueError, match=r"config.json: hidden_act='gelu': expected 'silu'"):
        import_hf(broken, tmp_path / "out")
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"config.json: model_type='gpt2'"):
        import_hf(broken, tmp_path / "out")


def test_layout_that_does_not_divide_the_model_is_refused(random_hf, tmp_path):
    with pytest.raises(ValueError, match=r"--tp=3: must be >= 1 and divide the 4 attention heads"):
        import_hf(random_hf, tmp_path / "out", tp=3)
    with pytest.raises(ValueError, match=r"--pp=3: must be >= 1 and divide the 4 layers"):
        import_hf(random_hf, tmp_path / "out", pp=3)


def test_cli_import_at_tp2_then_export_gives_the_same_model(random_hf, tmp_path):
    """`chatbaker import-hf --tp 2` starts its two ranks with torchrun; `export-hf` reads them back."""
    import subprocess
    import sys

    from chatbaker_megatron.cli import main as cli_main

    imported = tmp_path / "imported"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatbaker_megatron.cli",
            "import-hf",
            "--hf",
            str(random_hf),
            "--output",
            str(imported),
            "--tp",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "(tp=2, pp=1)" in run.stdout
    exported = tmp_path / "exported"
    assert (
        cli_main(
            ["export-hf", "--checkpoint", str(imported), "--output", str(exported), "--no-progress"]
        )
        == 0
    )
    torch.testing.assert_close(
        tiny.hf_logits(exported, tiny.tokens()),
        tiny.hf_logits(random_hf, tiny.tokens()),
        rtol=0,
        atol=0,
    )
    card = (exported / "README.md").read_text()
    assert f"source: Hugging Face model {random_hf.name}" in card
