"""The root run config, its registration with Hydra, and cross-group validation.

Each Hydra group has one dataclass (config/<group>.py); `RunConfig` ties them
together, and its defaults are the bundled demo run's (conf/config.yaml's
default options hold nothing of their own). Hydra merges the YAML files onto
these dataclasses, so a wrong type or a value outside a `Choice` fails at
compose time; `to_run_config` refuses keys the schema lacks (`+train.foo=1`,
which Hydra adds even in struct mode); `validate` has each group check itself
(its declared ranges and choices, config/checks.py, then its own rules), then
checks the combinations no single group can (heads vs TP, layers vs PP*VPP,
batch vs micro batch * DP, ...). All run before any process group starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from chatbaker_megatron.config.checkpoint import CheckpointConfig
from chatbaker_megatron.config.checks import ConfigError, check_known_keys
from chatbaker_megatron.config.cluster import ClusterConfig
from chatbaker_megatron.config.data import DataConfig, DatasetConfig
from chatbaker_megatron.config.launch import LaunchConfig
from chatbaker_megatron.config.logging import LoggingConfig
from chatbaker_megatron.config.model import ModelConfig
from chatbaker_megatron.config.optim import OptimConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.config.train import TrainConfig


def _demo_layout() -> ParallelConfig:
    """conf/parallel/dp2.yaml: the two CPU ranks as data-parallel replicas with ZeRO-1.

    The run's, not ParallelConfig's own defaults: code that builds a layout
    (`ParallelConfig(tp=2)`) starts from one plain replica."""
    return ParallelConfig(micro_batch_size=2, distributed_optimizer=True)


def _demo_data() -> DataConfig:
    """conf/data/demo.yaml: the bundled sample corpus, built into `root` on first use.

    The run's, not DataConfig's own defaults: code that describes a dataset
    (`DataConfig(root=...)`) gets no demo to prepare."""
    return DataConfig(
        root="runs/demo_data",
        prepare_demo=True,
        datasets=[
            DatasetConfig(name="ko_law_bills", path="pretrain_ko"),
            DatasetConfig(name="en_pydoc", path="pretrain_en"),
        ],
        split=[90.0, 5.0, 5.0],
    )


@dataclass
class RunConfig:
    # Interpolations, resolved when the config is composed: the run is named after its
    # model and data unless a preset or override names it.
    name: str = "${model.name}-${data.kind}"
    # One directory for the whole run, shared by every rank and node (no
    # timestamps: all ranks must agree on it). Re-running with the same run_dir
    # resumes from its latest checkpoint.
    run_dir: str = "runs/${name}"
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=_demo_layout)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    data: DataConfig = field(default_factory=_demo_data)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # torchrun's restart budget and monitoring (docs/training.md "When things fail").
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    @property
    def checkpoint_dir(self) -> str:
        """Where checkpoints go: checkpoint.dir, or `<run_dir>/checkpoints`."""
        return self.checkpoint.dir or os.path.join(self.run_dir, "checkpoints")


def register() -> None:
    """Make `run_schema` available to conf/config.yaml's defaults list."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {expected}")


def validate(cfg: RunConfig, world_size: int | None = None) -> None:
    """Check a RunConfig; raise ConfigError naming the offending key.

    Each group validates itself first (its declared ranges and choices, then
    its own rules), so the combinations below never see a zero or negative
    size. `world_size` defaults to the cluster's nodes * devices_per_node.
    """
    _require(
        bool(str(cfg.run_dir).strip()),
        "run_dir",
        cfg.run_dir,
        "a directory (empty would train into the current directory)",
    )
    for group in fields(cfg):
        if group.name not in ("name", "run_dir"):
            getattr(cfg, group.name).validate()
    model, par, cluster, train, optim = cfg.model, cfg.parallel, cfg.cluster, cfg.train, cfg.optim
    world = cluster.world_size if world_size is None else world_size

    _require(
        world % (par.tp * par.pp * par.cp) == 0,
        "parallel.tp*pp*cp",
        par.tp * par.pp * par.cp,
        f"must divide the world size {world} "
        f"(cluster.nodes={cluster.nodes} x cluster.devices_per_node={cluster.devices_per_node})",
    )
    dp = world // (par.tp * par.pp * par.cp)
    if par.dp is not None:
        _require(par.dp == dp, "parallel.dp", par.dp, f"world size {world} / (tp*pp*cp) gives {dp}")
    _require(
        model.num_attention_heads % par.tp == 0,
        "parallel.tp",
        par.tp,
        f"must divide model.num_attention_heads={model.num_attention_heads}",
    )
    _require(
        model.kv_heads % par.tp == 0,
        "parallel.tp",
        par.tp,
        f"must divide the key/value heads (model.num_query_groups={model.kv_heads})",
    )
    _require(
        model.ffn_hidden_size % par.tp == 0,
        "parallel.tp",
        par.tp,
        f"must divide model.ffn_hidden_size={model.ffn_hidden_size}",
    )
    stages = par.pp * (par.vpp or 1)
    _require(
        model.num_layers % stages == 0,
        "model.num_layers",
        model.num_layers,
        f"must be divisible by parallel.pp * parallel.vpp = {stages}",
    )

    _require(
        train.seq_length <= model.max_position_embeddings,
        "train.seq_length",
        train.seq_length,
        f"exceeds model.max_position_embeddings={model.max_position_embeddings}",
    )
    _require(
        par.sp is False or train.seq_length % par.tp == 0,
        "train.seq_length",
        train.seq_length,
        f"must be divisible by parallel.tp={par.tp} with sequence parallel",
    )
    per_step = par.micro_batch_size * dp
    _require(
        train.global_batch_size % per_step == 0,
        "train.global_batch_size",
        train.global_batch_size,
        f"must be divisible by parallel.micro_batch_size * DP = {par.micro_batch_size} * {dp}",
    )
    micro_batches = train.global_batch_size // per_step
    if par.vpp is not None:
        _require(
            micro_batches % par.pp == 0,
            "train.global_batch_size",
            train.global_batch_size,
            f"gives {micro_batches} micro-batches per step; the interleaved schedule needs a "
            f"multiple of parallel.pp={par.pp}",
        )
    _require(
        train.fault_injection.rank < world,
        "train.fault_injection.rank",
        train.fault_injection.rank,
        f"expected a rank of the world of {world}",
    )

    iters = train.iterations
    warmup = optim.warmup_iterations(iters)
    decay = optim.decay_iters or iters
    if iters > 0:
        _require(
            warmup < decay,
            "optim.warmup_iters",
            warmup,
            f"warmup must be shorter than the decay ({decay} iterations: optim.decay_iters or the run)",
        )


def to_run_config(cfg: DictConfig) -> RunConfig:
    """A composed Hydra config as a validated RunConfig object."""
    check_known_keys(cfg, RunConfig)
    run: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(run)
    return run
