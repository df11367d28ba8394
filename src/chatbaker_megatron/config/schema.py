"""The root run config, its registration with Hydra, and cross-group validation.

Each Hydra group has one dataclass (config/<group>.py); `RunConfig` ties them
together. Hydra merges the YAML files onto these dataclasses, so a wrong
type fails at compose time; `to_run_config` refuses keys the schema lacks
(`+train.foo=1`, which Hydra adds even in struct mode); `validate` checks
every numeric key against its declared range (config/checks.py), then the
combinations no single group can (heads vs TP, layers vs PP*VPP, batch vs
micro batch * DP, ...). All run before any process group starts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from chatbaker_megatron.config.checkpoint import CHECKPOINT_FORMATS, CheckpointConfig
from chatbaker_megatron.config.checks import ConfigError, check_known_keys, check_ranges
from chatbaker_megatron.config.cluster import PRECISIONS, ClusterConfig
from chatbaker_megatron.config.data import DataConfig, validate_data_config
from chatbaker_megatron.config.launch import LaunchConfig
from chatbaker_megatron.config.logging import LoggingConfig
from chatbaker_megatron.config.model import KERNEL_BACKENDS, ModelConfig
from chatbaker_megatron.config.optim import LR_DECAY_STYLES, RESUME_SCHEDULES, OptimConfig
from chatbaker_megatron.config.parallel import RECOMPUTE_MODES, ParallelConfig
from chatbaker_megatron.config.train import (
    NAN_POLICIES,
    PREFERENCE_LOSSES,
    SPIKE_POLICIES,
    TrainConfig,
)


@dataclass
class RunConfig:
    name: str = "demo"
    # One directory for the whole run, shared by all ranks and nodes.
    run_dir: str = "runs/demo"
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    data: DataConfig = field(default_factory=DataConfig)
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


def _one_of(key: str, value: Any, choices: tuple) -> None:
    _require(value in choices, key, value, f"expected one of {', '.join(map(str, choices))}")


def train_iters(train: Any) -> int:
    """The iteration budget, from train.train_iters or train.train_tokens."""
    if train.train_iters is not None:
        return int(train.train_iters)
    return math.ceil(train.train_tokens / (train.global_batch_size * train.seq_length))


def validate(cfg: Any, world_size: int | None = None) -> None:
    """Check a composed RunConfig; raise ConfigError naming the offending key.

    `world_size` defaults to the cluster's nodes * devices_per_node. Every
    numeric key is first checked against its declared range, so the
    combinations below never see a zero or negative size.
    """
    check_ranges(cfg)
    model, par, cluster, train, optim = cfg.model, cfg.parallel, cfg.cluster, cfg.train, cfg.optim
    world = cluster.nodes * cluster.devices_per_node if world_size is None else world_size
    _require(
        bool(str(cfg.run_dir).strip()),
        "run_dir",
        cfg.run_dir,
        "a directory (empty would train into the current directory)",
    )

    _require(
        model.hidden_size % model.num_attention_heads == 0,
        "model.hidden_size",
        model.hidden_size,
        f"must be divisible by model.num_attention_heads={model.num_attention_heads}",
    )
    kv_heads = model.num_query_groups or model.num_attention_heads
    _require(
        model.num_attention_heads % kv_heads == 0,
        "model.num_query_groups",
        model.num_query_groups,
        f"must divide model.num_attention_heads={model.num_attention_heads}",
    )
    _one_of("model.kernels.attention", model.kernels.attention, KERNEL_BACKENDS)
    _one_of("model.kernels.norm", model.kernels.norm, KERNEL_BACKENDS)

    _require(par.cp == 1, "parallel.cp", par.cp, "only context parallel size 1 is supported")
    _one_of("parallel.recompute", par.recompute, RECOMPUTE_MODES)
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
        kv_heads % par.tp == 0,
        "parallel.tp",
        par.tp,
        f"must divide the key/value heads (model.num_query_groups={kv_heads})",
    )
    _require(
        model.ffn_hidden_size % par.tp == 0,
        "parallel.tp",
        par.tp,
        f"must divide model.ffn_hidden_size={model.ffn_hidden_size}",
    )
    _require(
        not par.sp or par.tp > 1, "parallel.sp", par.sp, "sequence parallel needs parallel.tp > 1"
    )
    if par.vpp is not None:
        _require(par.pp > 1, "parallel.vpp", par.vpp, "virtual stages need parallel.pp > 1")
    if par.overlap_param_gather:
        _require(
            par.distributed_optimizer,
            "parallel.overlap_param_gather",
            True,
            "needs parallel.distributed_optimizer=true (it overlaps that optimizer's all-gather)",
        )
        _require(
            par.overlap_grad_reduce is not False,
            "parallel.overlap_param_gather",
            True,
            "needs parallel.overlap_grad_reduce (megatron overlaps both or only the reduce)",
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
        (train.train_iters is None) != (train.train_tokens is None),
        "train.train_iters",
        train.train_iters,
        f"set exactly one of train.train_iters and train.train_tokens (train_tokens={train.train_tokens})",
    )
    _one_of("train.nan_policy", train.nan_policy, NAN_POLICIES)
    _one_of("checkpoint.format", cfg.checkpoint.format, CHECKPOINT_FORMATS)
    _one_of("checkpoint.final_format", cfg.checkpoint.final_format, CHECKPOINT_FORMATS)
    _one_of("train.spike_policy", train.spike_policy, SPIKE_POLICIES)
    _one_of("train.preference.loss", train.preference.loss, PREFERENCE_LOSSES)
    _require(
        train.fault_injection.rank < world,
        "train.fault_injection.rank",
        train.fault_injection.rank,
        f"expected a rank of the world of {world}",
    )

    _require(
        optim.min_lr <= optim.lr,
        "optim.min_lr",
        optim.min_lr,
        f"expected <= optim.lr={optim.lr}",
    )
    _one_of("optim.decay_style", optim.decay_style, LR_DECAY_STYLES)
    _one_of("optim.resume_schedule", optim.resume_schedule, RESUME_SCHEDULES)
    _require(
        optim.warmup_ratio is None or optim.warmup_iters is None,
        "optim.warmup_ratio",
        optim.warmup_ratio,
        f"set at most one of optim.warmup_ratio and optim.warmup_iters (={optim.warmup_iters})",
    )

    iters = train_iters(train)
    warmup = optim.warmup_iterations(iters)
    decay = optim.decay_iters or iters
    if iters > 0:
        _require(
            warmup < decay,
            "optim.warmup_iters",
            warmup,
            f"warmup must be shorter than the decay ({decay} iterations: optim.decay_iters or the run)",
        )

    _one_of("cluster.precision", cluster.precision, PRECISIONS)
    try:
        validate_data_config(cfg.data)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def to_run_config(cfg: DictConfig) -> RunConfig:
    """A composed Hydra config as a validated RunConfig object."""
    check_known_keys(cfg, RunConfig)
    run: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(run)
    return run
