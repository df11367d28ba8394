"""`chatbaker train ... --dry-run`: the real shards, built as fake tensors, equal the planner.

Each dry run is a process of its own: it owns torch.distributed's global
state (a fake world of the run's size) and megatron's parallel_state. They
are forked from the suite's forkserver (tests/support/forkserver.py), which
spares each one the imports.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.forkserver import run_cli

TIMEOUT = 600


def dry_run(*args: str) -> subprocess.CompletedProcess:
    return run_cli(["train", *args, "--dry-run", "--json"], TIMEOUT, ignore_warnings=True)


def dry_run_json(*args: str) -> dict:
    result = dry_run(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "overrides,ranks",
    [
        (["experiment=plm_7b_a100x256"], [0, 255]),
        (["experiment=plm_1.3b_a100x256"], [0, 255]),
        (
            [
                "experiment=plm_7b_a100x256",
                "parallel.tp=4",
                "parallel.pp=4",
                "parallel.vpp=2",
                "parallel.dp=null",
            ],
            [0, 63, 64, 127, 128, 191, 192, 255],
        ),
    ],
)
def test_default_ranks_equal_the_planner(overrides, ranks):
    data = dry_run_json(*overrides)
    assert [r["rank"] for r in data["ranks"]] == ranks
    for r in data["ranks"]:
        assert r["mismatches"] == [], r
        for key in ("weights", "grads", "optimizer"):
            assert r["built"][key] == r["planned"][key]
        check_checkpoint_figures(r, data)


def check_checkpoint_figures(r: dict, data: dict) -> None:
    """Against the rank's parameter count: Adam keeps fp32 main weights and two moments."""
    fp32_state = 12 * r["built"]["params"]
    dp = data["world_size"] // (data["parallel"]["tp"] * data["parallel"]["pp"])
    dp_format = r["checkpoint"]["formats"]["dp_reshardable"]
    fully = r["checkpoint"]["formats"]["fully_reshardable"]
    # fully_reshardable: DP rank 0 gathers and writes the whole state of its model shard,
    # every rank reads all of it back into host buffers.
    assert fully["load_host"] == fp32_state
    assert fully["gathered"] == (fp32_state if r["dp_rank"] == 0 else 0)
    if r["dp_rank"] == 0:
        assert fully["written"] >= fp32_state
    # dp_reshardable: each rank writes its own shard (padding aside), gathers nothing.
    assert dp_format["gathered"] == dp_format["load_host"] == 0
    assert dp_format["written"] >= fp32_state // dp * 0.99
    assert data["checkpoint"]["periodic_and_stop"]["format"] == "dp_reshardable"
    assert data["checkpoint"]["final"]["format"] == "fully_reshardable"


def test_invalid_layout_fails_like_train():
    result = dry_run("experiment=plm_7b_a100x256", "parallel.tp=3")
    assert result.returncode != 0
    assert "invalid config: parallel.tp*pp*cp=3: must divide the world size 256" in result.stderr


def test_unstated_vocab_size_is_named():
    """The bundled tiny model takes the tokenizer's vocabulary; the dry run asks for it."""
    result = dry_run("cluster.devices_per_node=1", "parallel.dp=null")
    assert result.returncode != 0
    assert "--dry-run needs model.vocab_size" in result.stderr
    assert "Traceback" not in result.stderr


def test_tiny_dry_run_equals_the_real_build():
    """A 1-rank CPU build of the tiny model (real tensors) holds what the dry run reports."""
    overrides = ["model.vocab_size=1000", "cluster.devices_per_node=1", "parallel.dp=null"]
    report = dry_run_json(*overrides)["ranks"][0]["built"]
    code = (
        "import json, torch.distributed as dist\n"
        "from torch.testing._internal.distributed.fake_pg import FakeStore\n"
        "from chatbaker_megatron.config.compose import compose\n"
        "from chatbaker_megatron import parallel\n"
        "from chatbaker_megatron.training import dry_run\n"
        "from chatbaker_megatron.training.engine import build_run_engine\n"
        f"cfg = compose({overrides!r})\n"
        "dist.init_process_group('fake', store=FakeStore(), rank=0, world_size=1)\n"
        "parallel.initialize(cfg.parallel, seed=1)\n"
        "engine = build_run_engine(cfg, vocab_size=1000, on_gpu=False)\n"
        "print(json.dumps(dry_run.held_state(engine).__dict__))\n"
    )
    real = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert real.returncode == 0, real.stderr
    held = json.loads(real.stdout.strip().splitlines()[-1])
    assert held == report
    assert held["params"] > 0
