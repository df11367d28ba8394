"""Where a datatrove job runs: this machine's processes or a SLURM job array.

One `ExecutorConfig` serves every datatrove job of the project (`chatbaker
curate`'s stages, `chatbaker preprocess --tasks N`); `data/executors.py`
turns it into datatrove's LocalPipelineExecutor or SlurmPipelineExecutor.
The SLURM fields are the ones those jobs need from datatrove's executor;
they are ignored by a local run.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from dataclasses import dataclass, field

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from chatbaker_megatron.config.checks import ConfigError, bounded, check_ranges
from chatbaker_megatron.config.compose import CONFIG_MODULE

EXECUTOR_KINDS = ("local", "slurm")
# sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS.
_SLURM_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}")


@dataclass
class ExecutorConfig:
    kind: str = "local"
    # Tasks split the input files between them (datatrove shards files by
    # rank); each task is one unit of resumption: a finished task leaves a
    # completion marker and is never run again.
    tasks: int = bounded(1, ge=1)
    # How many tasks run at once: local processes, or the `%N` limit of the
    # SLURM array. None: all of them.
    workers: int | None = bounded(None, ge=1)
    # Root of datatrove's logs, stats and completion markers (one folder per
    # stage below it). None: a folder next to the job's output.
    logging_dir: str | None = None
    # --- slurm only ---
    partition: str | None = None
    time: str = "24:00:00"
    cpus_per_task: int = bounded(1, ge=1)
    # sbatch takes whole gigabytes here (datatrove writes `--mem-per-cpu=<N>G`).
    mem_per_cpu_gb: int = bounded(2, ge=1)
    job_name: str = "chatbaker"
    qos: str | None = None
    # Shell lines each array task runs before the job, e.g. `module load
    # python; source /shared/venv/bin/activate`. None: activate the virtual
    # environment this command runs from.
    env_command: str | None = None
    # Further `#SBATCH --key=value` lines, e.g. {account: my_account}.
    sbatch_args: dict[str, str] = field(default_factory=dict)
    # The cluster's MaxArraySize: larger jobs are launched as several arrays.
    max_array_size: int = bounded(1001, ge=1)


def validate_executor_config(cfg: ExecutorConfig, prefix: str = "executor.") -> None:
    """Raise ConfigError naming the first impossible key (`prefix` + its name)."""
    check_ranges(cfg, prefix)
    if cfg.kind not in EXECUTOR_KINDS:
        raise ConfigError(f"{prefix}kind={cfg.kind!r}: expected one of {', '.join(EXECUTOR_KINDS)}")
    if cfg.kind != "slurm":
        return
    if not cfg.partition:
        raise ConfigError(f"{prefix}partition: required for kind=slurm (the sbatch --partition)")
    if not _SLURM_TIME.fullmatch(str(cfg.time)):
        raise ConfigError(
            f"{prefix}time={cfg.time!r}: expected an sbatch time limit such as 24:00:00 or 2-00:00:00"
        )
    if not cfg.job_name or any(c.isspace() for c in cfg.job_name):
        raise ConfigError(f"{prefix}job_name={cfg.job_name!r}: expected a name without spaces")


def preset_path(name: str) -> str:
    """The bundled `chatbaker curate` preset `name` (conf/curate/<name>.yaml)."""
    return str(importlib.resources.files(CONFIG_MODULE) / "curate" / f"{name}.yaml")


def load_executor_config(path: str) -> ExecutorConfig:
    """An ExecutorConfig from a YAML file of its keys, or of a config whose `executor:` holds them
    (a `chatbaker curate` preset), so one preset serves both verbs. A bare name (`slurm`) is
    the bundled curate preset of that name."""
    if os.sep not in path and not path.endswith((".yaml", ".yml")):
        path = preset_path(path)
    try:
        node = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such executor config file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not OmegaConf.is_dict(node):
        raise ConfigError(f"{path}: expected a YAML mapping of executor keys")
    if "executor" in node:
        node = node.executor
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ExecutorConfig), node)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {err}") from None
    cfg = OmegaConf.to_object(merged)
    validate_executor_config(cfg)
    return cfg
