"""The Hydra tree composes every preset, and impossible configs fail naming the key."""

from __future__ import annotations

import pytest

from chatbaker_megatron.config.compose import compose
from chatbaker_megatron.config.schema import ConfigError, train_iters

PRESETS = ["plm_1.3b_a100x256", "plm_7b_a100x256", "sft_1.3b_a100x8", "sft_7b_a100x8"]


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_compose_and_validate(preset):
    cfg = compose([f"experiment={preset}"])
    assert cfg.name == preset
    world = cfg.cluster.nodes * cfg.cluster.devices_per_node
    assert world == (256 if preset.startswith("plm") else 8)
    assert cfg.parallel.dp * cfg.parallel.tp * cfg.parallel.pp == world
    assert cfg.cluster.precision == "bf16"


def test_plm_presets_follow_the_released_recipe():
    small, big = compose(["experiment=plm_1.3b_a100x256"]), compose(["experiment=plm_7b_a100x256"])
    for cfg in (small, big):
        assert cfg.train.global_batch_size * cfg.train.seq_length == 4 * 1024 * 1024
        assert cfg.train.train_tokens == 1_400_000_000_000
        assert cfg.optim.weight_decay == 0.1
    assert small.optim.lr == 4e-4
    assert (small.model.num_layers, small.model.hidden_size, small.model.ffn_hidden_size) == (
        24,
        2048,
        5632,
    )
    assert (big.model.num_layers, big.model.hidden_size, big.model.ffn_hidden_size) == (
        32,
        4096,
        11008,
    )
    assert train_iters(small.train) == 333_787  # ceil(1.4T / 4,194,304)


def test_sft_presets_follow_vicuna():
    cfg = compose(["experiment=sft_7b_a100x8"])
    assert (cfg.train.global_batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (16, 2e-5, 0.0)
    assert cfg.optim.warmup_ratio == 0.03 and cfg.train.seq_length == 2048
    assert cfg.data.kind == "sft"


BAD = {
    "parallel.tp=3": "parallel.tp",  # does not divide 4 heads nor the world of 2
    "parallel.tp=2 parallel.pp=2": "parallel.tp*pp*cp",  # world 2 cannot hold 4 model-parallel ranks
    "model.num_attention_heads=6 model.hidden_size=132 model.num_query_groups=null parallel=tp2 parallel.tp=4 cluster.devices_per_node=4": "parallel.tp",
    "parallel=pp2_vpp2 model.num_layers=6": "model.num_layers",
    "train.global_batch_size=6": "train.global_batch_size",  # micro batch 2 x DP 2
    "train.seq_length=1024": "train.seq_length",  # tiny has 512 positions
    "train.train_tokens=1000": "train.train_iters",  # both budgets set
    # 3 micro-batches on PP2 with virtual stages: not a multiple of pp
    "parallel=pp2_vpp2 train.global_batch_size=6": "train.global_batch_size",
    "parallel.sp=true": "parallel.sp",
    "model.num_query_groups=3": "model.num_query_groups",
    "optim.min_lr=1.0": "optim.min_lr",
    "optim.warmup_iters=400": "optim.warmup_iters",
    "train.nan_policy=ignore": "train.nan_policy",
    "model.kernels.attention=cudnn": "model.kernels.attention",
    "data.datasets.0.weight=-1": "data.datasets[0].weight",
}


@pytest.mark.parametrize("overrides", BAD)
def test_invalid_config_names_the_key(overrides):
    with pytest.raises(ConfigError) as err:
        compose(overrides.split())
    assert str(err.value).startswith(BAD[overrides]), str(err.value)


def test_wrong_type_fails_at_compose():
    with pytest.raises(Exception, match=r"parallel\.tp"):
        compose(["parallel.tp=two"])


def test_model_vocab_size_is_the_tokenizers():
    """The tokenizer decides the vocabulary; `model.vocab_size` only states it (for the planner)."""
    compose(["model.vocab_size=null"]).model.check_vocab_size(4096)
    model = compose(["model=1.3b"]).model
    model.check_vocab_size(50304)
    with pytest.raises(ValueError) as err:
        model.check_vocab_size(4096)
    assert str(err.value).startswith("model.vocab_size=50304 but the tokenizer has 4096 tokens")
