"""The Hydra tree composes every preset, and impossible configs fail naming the key."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from chatbaker_megatron.config.checks import RANGE, Choice, Range, check_values, to_plain_dict
from chatbaker_megatron.config.cluster import ClusterConfig
from chatbaker_megatron.config.compose import check_override_keys, compose, compose_dict
from chatbaker_megatron.config.data import DatasetConfig
from chatbaker_megatron.config.schema import ConfigError, RunConfig, validate

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
    assert small.train.iterations == 333_787  # ceil(1.4T / 4,194,304)


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
    # Each of these used to pass validation (issue 14).
    "checkpoint.save_interval=-1": "checkpoint.save_interval=-1: expected >= 1",
    "optim.clip_grad=-1": "optim.clip_grad=-1.0: expected >= 0",
    "optim.adam_beta1=1.5": "optim.adam_beta1=1.5: expected in [0, 1)",
    "train.eval_iters=-3": "train.eval_iters=-3: expected >= 1",
    "checkpoint.keep_last=0": "checkpoint.keep_last=0: expected >= 1",
    "optim.lr=nan": "optim.lr=nan: expected a finite number > 0",
    "optim.weight_decay=-0.1": "optim.weight_decay=-0.1: expected >= 0",
    "optim.warmup_iters=-1": "optim.warmup_iters=-1: expected >= 0",
    "train.global_batch_size=0": "train.global_batch_size=0: expected >= 1",
    "logging.log_interval=0": "logging.log_interval=0: expected >= 1",
    # Issue 25: an empty run_dir trained into the current directory.
    "run_dir=": "run_dir='': a directory",
    # A value outside a key's Choice enum: refused while Hydra composes.
    "optim.resume_schedule=both": "optim.resume_schedule='both': expected one of config, checkpoint",
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


def numeric_fields(schema: type, prefix: str = ""):
    """(key, field, number type, is a list) of every int/float field, optional or a list
    of them, in `schema` and the config dataclasses it holds."""
    hints = typing.get_type_hints(schema)
    for spec in dataclasses.fields(schema):
        hint, args = hints[spec.name], typing.get_args(hints[spec.name])
        kind = next(a for a in args if a is not type(None)) if type(None) in args else hint
        is_list = typing.get_origin(kind) is list
        inner = typing.get_args(kind)[0] if is_list else kind
        if dataclasses.is_dataclass(inner):
            yield from numeric_fields(inner, f"{prefix}{spec.name}.")
        elif inner in (int, float):
            yield f"{prefix}{spec.name}", spec, inner, is_list


NUMERIC = list(numeric_fields(RunConfig))


def test_every_numeric_key_declares_a_range():
    assert len(NUMERIC) > 40
    missing = [key for key, spec, _, _ in NUMERIC if RANGE not in spec.metadata]
    assert not missing, f"declare a range with config.checks.bounded: {missing}"
    check_values(RunConfig())  # the defaults are inside their own ranges


def outside(bound: Range) -> float:
    """A value just outside `bound`."""
    if bound.ge is not None:
        return bound.ge - 1
    if bound.gt is not None:
        return bound.gt
    return bound.le + 1 if bound.le is not None else bound.lt


@pytest.mark.parametrize(("key", "spec", "kind", "is_list"), NUMERIC, ids=[n[0] for n in NUMERIC])
def test_a_value_outside_the_range_fails_naming_key_value_and_range(key, spec, kind, is_list):
    cfg = RunConfig()
    cfg.data.datasets = [DatasetConfig("web", "web")]
    node, path = cfg, key.split(".")
    for name in path[:-1]:
        node = getattr(node, name)
        if name == "datasets":
            node, key = node[0], key.replace("datasets.", "datasets[0].")
    bound = spec.metadata[RANGE]
    value = kind(outside(bound))
    if is_list:
        setattr(node, path[-1], [value])
        key = f"{key}[0]"
    else:
        setattr(node, path[-1], value)
    with pytest.raises(ConfigError) as err:
        check_values(cfg)
    assert str(err.value) == f"{key}={value!r}: expected {bound}"


UNKNOWN = {
    "+train.foo=1": "train.foo: unknown config key; train has seq_length, ",
    "+foo=1": "foo: unknown config key; the root has name, run_dir, ",
    "+model.kernels.fused=1": "model.kernels.fused: unknown config key; model.kernels has ",
    "+data.datasets.0.bogus=1": "data.datasets[0].bogus: unknown config key; ",
    "+train.seq_lenght=64": "train.seq_lenght: unknown config key (did you mean train.seq_length?)",
}


@pytest.mark.parametrize("override", UNKNOWN)
def test_unknown_keys_fail_at_compose_naming_the_key(override):
    """Hydra's `+key=value` adds keys even in struct mode; the schema refuses them."""
    for build in (compose, compose_dict):
        with pytest.raises(ConfigError) as err:
            build([override])
        assert str(err.value).startswith(UNKNOWN[override]), str(err.value)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["+train.foo=1"], {}),  # chatbaker train: before torchrun starts
        (["-m", "+train.foo=1,2"], {}),  # multirun: every point
        (["+train.foo=1"], {"LOCAL_RANK": "0", "WORLD_SIZE": "2", "RANK": "0"}),  # a rank
    ],
    ids=["launcher", "multirun", "rank"],
)
def test_train_refuses_unknown_keys_before_writing_anything(tmp_path, args, env):
    result = subprocess.run(
        [sys.executable, "-m", "chatbaker_megatron.train", *args, f"run_dir={tmp_path}/run"],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0
    assert "invalid config: train.foo: unknown config key" in result.stderr, result.stderr
    written = [f for _, _, files in os.walk(tmp_path) for f in files]
    # multirun.yaml is Hydra's record of the sweep, written before any point runs.
    assert set(written) <= {"multirun.yaml"}, written


def test_the_config_reference_lists_every_range():
    docs = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    table = docs.read_text(encoding="utf-8").split("## Value ranges", 1)[1]
    listed = dict(re.findall(r"^\| `([^`]+)` \| (.+?) \|$", table, re.MULTILINE))
    declared = {
        key.replace("datasets.", "datasets[].") + ("[]" if is_list else ""): str(
            spec.metadata[RANGE]
        )
        for key, spec, _, is_list in NUMERIC
    }
    missing = [f"| `{key}` | {allowed} |" for key, allowed in declared.items() if key not in listed]
    assert not missing, "add to docs/config.md, Value ranges:\n" + "\n".join(missing)
    assert listed == declared


TYPOS = {
    "train": (
        ["train.seq_lenght=64"],
        "train.seq_lenght: unknown config key (did you mean train.seq_length?)",
    ),
    "curate": (
        ["input=in", "output=out", "read.text_kye=body"],
        "read.text_kye: unknown config key (did you mean read.text_key?)",
    ),
    "eval-chat": (["clinet.retries=1"], "clinet: unknown config key (did you mean client?)"),
}


@pytest.mark.parametrize("verb", TYPOS)
def test_a_typo_in_a_key_is_one_line_with_the_nearest_key(tmp_path, verb):
    """Hydra's own error suggested `+key` (adding the typo); curate and eval-chat printed
    its 40-line traceback (issue 23)."""
    args, message = TYPOS[verb]
    result = subprocess.run(
        [sys.executable, "-m", "chatbaker_megatron.cli", verb, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "override",
    [
        "model=7b",  # a group choice
        "experiment=plm_7b_a100x256",  # a group that is no key
        "hydra.run.dir=x",
        "hydra/launcher=basic",
        "+train.foo=1",  # refused later, when composed (check_known_keys)
        "~train.init_from",
        "data.datasets.0.weight=2",  # a list's items are checked when composed
        "optim.lr=1e-4,3e-4",  # a sweep
    ],
)
def test_override_keys_leave_groups_and_hydra_to_hydra(override):
    check_override_keys([override], RunConfig)


def test_a_bad_choice_names_the_key_and_the_choices():
    """Refused by OmegaConf while composing, or by check_values for a dataclass built in
    Python: one message either way."""
    message = "cluster.precision='fp8': expected one of fp32, bf16, fp16"
    with pytest.raises(ConfigError) as err:
        compose(["cluster.precision=fp8"])
    assert str(err.value) == message
    with pytest.raises(ConfigError) as err:
        validate(dataclasses.replace(RunConfig(), cluster=ClusterConfig(precision="fp8")))
    assert str(err.value) == message


def test_the_stored_config_holds_plain_strings():
    """config.yaml and checkpoints store `Choice` keys as strings, loadable without the enums."""
    stored = to_plain_dict(RunConfig())
    assert type(stored["cluster"]["precision"]) is str
    assert type(stored["train"]["preference"]["loss"]) is str


def test_every_choice_is_named_as_its_value():
    """OmegaConf matches a value to a member by name, and a member hashes as its name:
    only name == value makes `fp16` compose and `DTYPES[cfg.cluster.precision]` work."""
    import chatbaker_megatron.config.curate
    import chatbaker_megatron.config.eval_chat  # noqa: F401  (their enums, for __subclasses__)

    choices = Choice.__subclasses__()
    assert len(choices) >= 14
    for choice in choices:
        assert [m.name for m in choice] == [m.value for m in choice], choice
