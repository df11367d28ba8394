"""The `data` config group: shipped YAML files match the schema, bad values name their key."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from chatbaker_megatron.config.data import (
    DataConfig,
    DatasetConfig,
    SFTConfig,
    cache_dir,
    resolve_path,
)
from chatbaker_megatron.config.schema import RunConfig

CONF = Path(__file__).resolve().parents[2] / "conf/data"


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_shipped_data_configs_are_valid(name):
    # Each option is merged onto the run's data (the demo's), as Hydra does.
    base = OmegaConf.structured(RunConfig).data
    OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.load(CONF / f"{name}.yaml"))).validate()


def test_the_kr_en_blend_weighs_korean_100b_to_english_1t():
    cfg = OmegaConf.merge(
        OmegaConf.structured(DataConfig), OmegaConf.load(CONF / "kr_en_blend.yaml")
    )
    assert [(d.name, d.weight) for d in cfg.datasets] == [("ko", 100.0), ("en", 1000.0)]
    assert cfg.cache_mode == "node_local"


def pretrain(**changes) -> DataConfig:
    cfg = DataConfig(datasets=[DatasetConfig("ko", "ko", 1.0), DatasetConfig("en", "en", 2.0)])
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            pretrain(kind="finetune"),
            "data.kind='finetune': expected one of pretrain, sft, preference",
        ),
        (pretrain(datasets=[]), "data.datasets=[]: expected at least one dataset"),
        (
            pretrain(datasets=[DatasetConfig("ko", "ko"), DatasetConfig("en", "en", -1.0)]),
            "data.datasets[1].weight=-1.0: expected > 0",
        ),
        (
            pretrain(datasets=[DatasetConfig("ko", "", 1.0)]),
            "data.datasets[0].path='': expected an indexed dataset prefix",
        ),
        (
            pretrain(datasets=[DatasetConfig("x", "a"), DatasetConfig("x", "b")]),
            "data.datasets[1].name='x': expected a name not used by another dataset",
        ),
        (pretrain(split=[1.0, 1.0]), "data.split=[1.0, 1.0]: expected 3 numbers"),
        (pretrain(split=[0.0, 1.0, 1.0]), "data.split[0]=0.0: expected > 0"),
        (pretrain(split=[1.0, -1.0, 1.0]), "data.split[1]=-1.0: expected >= 0"),
        (pretrain(cache_mode="nfs"), "data.cache_mode='nfs': expected one of node_local, shared"),
        (pretrain(tokenizer=""), "data.tokenizer='': expected a tokenizer directory"),
        (DataConfig(kind="sft"), "data.sft.path='': expected a preprocessed SFT prefix"),
        (
            DataConfig(kind="sft", sft=SFTConfig(path="s", template="nope")),
            "data.sft.template='nope': unknown chat template 'nope'",
        ),
        (
            DataConfig(kind="sft", sft=SFTConfig(path="s", valid_fraction=1.0)),
            "data.sft.valid_fraction=1.0: expected in [0, 1)",
        ),
        (
            DataConfig(kind="sft", sft=SFTConfig(path="s", epochs=0)),
            "data.sft.epochs=0: expected >= 1",
        ),
    ],
)
def test_invalid_values_name_the_key(cfg, message):
    with pytest.raises(ValueError) as err:
        cfg.validate()
    assert str(err.value).startswith(message)


def test_paths_resolve_against_root(tmp_path):
    assert resolve_path("/data", "ko/doc") == "/data/ko/doc"
    assert resolve_path("/data", "/abs/doc") == "/abs/doc"
    assert cache_dir(DataConfig(root="/data")) == "/data/index_cache"
    assert cache_dir(DataConfig(root="/data", cache_dir="/scratch/c")) == "/scratch/c"
