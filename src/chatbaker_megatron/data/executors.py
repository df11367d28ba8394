"""An `ExecutorConfig` -> datatrove's LocalPipelineExecutor or SlurmPipelineExecutor.

Every datatrove job of the project (`chatbaker curate`'s stages, `chatbaker
preprocess --tasks N`) is built here, so local and SLURM runs differ only in
the config. Both executors skip tasks whose completion marker
(`<logging_dir>/completions/<rank>`) exists, which is what makes a killed
job resumable; each stage needs its own logging folder for that reason
(`stage_logging_dir`).

Multi-stage jobs chain with `depends=`: on SLURM the next array starts after
the previous one succeeded (`afterok`); locally `run()` of the last stage
runs the unfinished earlier ones first.

Locally datatrove's console log (every task's pipeline, log lines and stats,
each stage's merged stats: hundreds of lines a curate run) shows only with
`chatbaker --verbose`; without it a task logs to its file
(`<logging_dir>/logs/task_<rank>.log`) and only its errors to the console,
so a verb prints its own progress and summary. On SLURM the logs are files.

Ray (datatrove's RayPipelineExecutor) needs the `ray` package, which the
project does not install; it is the next kind to add here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
from datatrove.executor.base import PipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger
from datatrove.utils.stats import PipelineStats

from chatbaker_megatron.config.executor import ExecutorConfig
from chatbaker_megatron.notices import verbose

# Where LocalPipelineExecutor logs outside any task (tasks skipped, a stage's merged stats).
_EXECUTOR_LOGGER = "datatrove.executor.local"


class _LocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor, its console log shown only when verbose() (module docstring).

    Both methods set it: with workers > 1 the tasks run in a pool of fresh
    processes, which inherit CHATBAKER_VERBOSE but not this process's loguru state.
    """

    def run(self) -> PipelineStats | None:
        _show_executor_log(verbose())
        return super().run()

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1) -> PipelineStats:
        shown = verbose()
        _show_executor_log(shown)
        # datatrove's own switch: a task whose local_rank is not 0 logs only errors to
        # the console, everything to its file (locally local_rank serves nothing else).
        return super()._run_for_rank(rank, local_rank if shown else max(local_rank, 1), node_rank)


def _show_executor_log(shown: bool) -> None:
    if shown:
        logger.enable(_EXECUTOR_LOGGER)
    else:
        logger.disable(_EXECUTOR_LOGGER)


def stage_logging_dir(cfg: ExecutorConfig, default_root: str, stage: str) -> str:
    """The logging folder of one stage: `<cfg.logging_dir or default_root>/<stage>`."""
    return os.path.join(cfg.logging_dir or default_root, stage)


def _env_command(cfg: ExecutorConfig) -> str | None:
    """What an array task runs first: the configured lines, or this virtual environment's
    activation (the array tasks need `launch_pickled_pipeline` and this package on PATH)."""
    if cfg.env_command:
        return cfg.env_command
    activate = os.path.join(sys.prefix, "bin", "activate")
    return f"source {activate}" if os.path.isfile(activate) else None


def build_executor(
    cfg: ExecutorConfig,
    pipeline: Sequence[PipelineStep | Callable],
    logging_dir: str,
    *,
    stage: str | None = None,
    tasks: int | None = None,
    depends: PipelineExecutor | None = None,
) -> PipelineExecutor:
    """A datatrove executor running `pipeline` as `tasks` (default `cfg.tasks`) tasks.

    `stage` names the SLURM job (`<job_name>_<stage>`); `depends` is the
    executor of the stage that must finish first (built by this function
    from the same config, so of the same kind).
    """
    cfg.validate()
    tasks = cfg.tasks if tasks is None else tasks
    if tasks < 1:
        raise ValueError(f"tasks={tasks}: expected >= 1")
    if cfg.kind == "local":
        return _LocalExecutor(
            pipeline=list(pipeline),
            tasks=tasks,
            workers=min(cfg.workers or tasks, tasks),
            logging_dir=logging_dir,
            depends=depends,
        )
    return SlurmPipelineExecutor(
        pipeline=list(pipeline),
        tasks=tasks,
        workers=cfg.workers or -1,
        logging_dir=logging_dir,
        depends=depends,
        partition=cfg.partition,
        time=cfg.time,
        cpus_per_task=cfg.cpus_per_task,
        mem_per_cpu_gb=cfg.mem_per_cpu_gb,
        job_name=f"{cfg.job_name}_{stage}" if stage else cfg.job_name,
        qos=cfg.qos or "",
        env_command=_env_command(cfg),
        sbatch_args=dict(cfg.sbatch_args),
        max_array_size=cfg.max_array_size,
    )
