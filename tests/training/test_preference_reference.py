"""The saved reference log-probs: read back exactly, refused for another setup, and the
held-out report (`make demo-dpo`) read from them and the run's metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from chatbaker_megatron.platform import detect
from chatbaker_megatron.training.preference import load_reference, save_reference
from chatbaker_megatron.training.preference_report import main, report

IDENTITY = {"init_from": "runs/sft/checkpoints", "seq_length": 384, "valid_pairs": [3, 7]}


def test_reference_round_trip_is_exact_and_checked(tmp_path):
    plat = detect()
    assert load_reference(str(tmp_path), IDENTITY, plat) is None  # a fresh run: pre-pass
    table = torch.randn(10, 2, dtype=torch.float64)
    save_reference(str(tmp_path), IDENTITY, table)
    assert torch.equal(load_reference(str(tmp_path), IDENTITY, plat).cpu(), table)
    changed = {**IDENTITY, "seq_length": 512}
    with pytest.raises(ValueError, match=r"seq_length: 384 -> 512"):
        load_reference(str(tmp_path), changed, plat)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "reference_logps.json",
        "reference_logps.npy",
    ]


def test_report_reads_the_held_out_pairs_and_the_last_validation(tmp_path, capsys):
    run_dir = str(tmp_path)
    table = torch.zeros(10, 2, dtype=torch.float64)
    table[3] = torch.tensor([-5.0, -9.0])  # held out, chosen likelier
    table[7] = torch.tensor([-9.0, -5.0])  # held out, rejected likelier
    table[0] = torch.tensor([-1.0, -9.0])  # a training pair: not counted
    save_reference(run_dir, IDENTITY, table)
    (tmp_path / "config.yaml").write_text("train:\n  eval_iters: 2\n  global_batch_size: 4\n")
    assert main([run_dir]) == 1
    assert "metrics.jsonl: not found; is" in capsys.readouterr().err
    rows = [{"iteration": 10, "loss": 0.6}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="no validation row"):
        report(run_dir)
    for iteration, accuracy in ((10, 0.5), (20, 0.875)):
        rows.append(
            {
                "iteration": iteration,
                "valid_reward_accuracy": accuracy,
                "valid_logps_accuracy": 0.25,
                "valid_reward_margin": 1.5,
            }
        )
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert report(run_dir).splitlines() == [
        "held-out pairs: 2 (a validation reads 8: train.eval_iters x global_batch_size, "
        "going on round them)",
        "before (SFT, all 2): logps accuracy 50.0%, reward accuracy 0.0% (policy = reference)",
        "after (iteration 20, its validation): logps accuracy 25.0%, reward accuracy 87.5%, "
        "reward margin 1.500",
    ]


def test_report_imports_neither_torch_nor_megatron():
    """So that it prints its figures at once and nothing else (no GPU-package notices)."""
    code = (
        "import sys; import chatbaker_megatron.training.preference_report; "
        "print(sorted(m for m in ('torch', 'megatron') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
