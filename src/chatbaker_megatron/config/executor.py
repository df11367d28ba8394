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

from chatbaker_megatron.config.checks import Choice, ConfigError, bounded, check_values
from chatbaker_megatron.config.compose import CONFIG_MODULE


class ExecutorKind(Choice):
    local = "local"
    slurm = "slurm"


# sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS.
_SLURM_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}")


@dataclass
class ExecutorConfig:
    kind: ExecutorKind = ExecutorKind.local
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

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible key (`executor.` + its name)."""
        check_values(self, "executor.")
        if self.kind != ExecutorKind.slurm:
            return
        if not self.partition:
            raise ConfigError(
                "executor.partition: required for kind=slurm (the sbatch --partition)"
            )
        if not _SLURM_TIME.fullmatch(str(self.time)):
            raise ConfigError(
                f"executor.time={self.time!r}: expected an sbatch time limit such as 24:00:00 "
                "or 2-00:00:00"
            )
        if not self.job_name or any(c.isspace() for c in self.job_name):
            raise ConfigError(
                f"executor.job_name={self.job_name!r}: expected a name without spaces"
            )


def curate_executor() -> ExecutorConfig:
    """`chatbaker curate`'s executor, which its presets (conf/curate/*.yaml) change: on
    this machine one task at a time (the `local` preset, the default), which needs no
    extra process per task."""
    return ExecutorConfig(workers=1)


def preset_path(name: str) -> str:
    """The bundled `chatbaker curate` preset `name` (conf/curate/<name>.yaml)."""
    return str(importlib.resources.files(CONFIG_MODULE) / "curate" / f"{name}.yaml")


def load_executor_config(path: str) -> ExecutorConfig:
    """An ExecutorConfig from a YAML file of its keys, or of a config whose `executor:` holds them
    (a `chatbaker curate` preset), so one preset serves both verbs. A bare name (`slurm`) is
    the bundled curate preset of that name. A curate preset's keys change curate's executor
    (`curate_executor`), any other file's ExecutorConfig's defaults."""
    bundled = os.sep not in path and not path.endswith((".yaml", ".yml"))
    if bundled:
        path = preset_path(path)
    try:
        node = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such executor config file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not OmegaConf.is_dict(node):
        raise ConfigError(f"{path}: expected a YAML mapping of executor keys")
    curate_preset = bundled or "executor" in node
    if "executor" in node:
        node = node.executor
    base = curate_executor() if curate_preset else ExecutorConfig()
    try:
        merged = OmegaConf.merge(OmegaConf.structured(base), node)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {err}") from None
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, ExecutorConfig)  # merged onto a structured ExecutorConfig
    cfg.validate()
    return cfg
