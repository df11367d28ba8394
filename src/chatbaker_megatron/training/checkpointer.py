"""The run's checkpoints: what the run starts from, when it saves, in which format and how.

The trainer tells the `Checkpointer` where the run is (`after_step`,
`at_exit`); the checkpointer decides: a save every
`checkpoint.save_interval` (in the background with `checkpoint.async_save`,
except at the last iteration), `checkpoint.final_format` at the last
iteration, a synchronous save on exit (`checkpoint.save_on_exit`) unless
that iteration is saved already, and publishing a background save once
every rank wrote it (checkpoint/background.py).
"""

from __future__ import annotations

import os
from typing import Any, TypedDict

from chatbaker_megatron.checkpoint.background import BackgroundSaves
from chatbaker_megatron.checkpoint.layout import iteration_dir, last_good, latest_checkpoint
from chatbaker_megatron.checkpoint.load import load_checkpoint, resume_checkpoint
from chatbaker_megatron.checkpoint.save import save_checkpoint
from chatbaker_megatron.checkpoint.state import TrainState
from chatbaker_megatron.config.schema import RunConfig
from chatbaker_megatron.training.engine import Engine
from chatbaker_megatron.training.watchdog import HangWatchdog


class _SaveOptions(TypedDict):
    """The keyword arguments of `save_checkpoint` and `BackgroundSaves.start`."""

    keep_last: int
    finite: bool
    optimizer_format: str


class Checkpointer:
    def __init__(
        self,
        cfg: RunConfig,
        config_dict: dict[str, Any],
        engine: Engine,
        watchdog: HangWatchdog,
        total_iters: int,
    ) -> None:
        self.cfg = cfg
        self.root = cfg.checkpoint_dir
        self.config_dict = config_dict
        self.engine = engine
        self.watchdog = watchdog
        self.total_iters = total_iters
        self.background = BackgroundSaves() if cfg.checkpoint.async_save else None
        # The last step's loss and grad norm were finite; recorded in each checkpoint.
        self._finite = True

    def restore(self) -> TrainState:
        """Collective: resume from the newest complete checkpoint (checkpoint.auto_resume), else
        start from train.init_from's weights, else from scratch."""
        ck = self.cfg.checkpoint
        if ck.auto_resume:
            resumed = resume_checkpoint(
                self.root,
                self.engine,
                fallback=ck.fallback,
                allow_unverified=ck.allow_unverified,
                schedule_from=self.cfg.optim.resume_schedule,
                optim_config=self.config_dict.get("optim"),
            )
            if resumed is not None:
                return resumed
        init_from = self.cfg.train.init_from
        if init_from:
            return load_checkpoint(
                latest_checkpoint(init_from) or init_from,
                self.engine,
                weights_only=True,
                allow_unverified=ck.allow_unverified,
            )
        return TrainState()

    def after_step(self, state: TrainState, finite: bool) -> None:
        """Collective: publish a finished background save; save at checkpoint.save_interval."""
        self._finite = finite
        self._publish(wait=False)
        interval = self.cfg.checkpoint.save_interval
        if interval and state.iteration % interval == 0:
            last = state.iteration == self.total_iters
            self.save(state, background=not last, final=last)

    def at_exit(self, state: TrainState) -> None:
        """Collective: finish any background save; save the state unless it is saved already."""
        self._publish(wait=True)
        if self.cfg.checkpoint.save_on_exit and not self.saved_at(state.iteration):
            self.save(state, final=state.iteration >= self.total_iters)

    def save_at_halt(self, state: TrainState, finite: bool) -> str:
        """Collective: save the state a halting run stops in (unless saved); says where it and
        the last finite checkpoint are."""
        if not self.saved_at(state.iteration):
            self.save(state, finite=finite)
        good = last_good(self.root)
        return (
            f"the state at the halt is saved as {iteration_dir(self.root, state.iteration)}; "
            "the last finite checkpoint is "
            + (iteration_dir(self.root, good) if good is not None else "none (none was saved)")
        )

    def save(
        self,
        state: TrainState,
        finite: bool | None = None,
        *,
        background: bool = False,
        final: bool = False,
    ) -> None:
        """Collective. `finite` (default: the last step's): the loss and grad norm were finite
        (pruning keeps the newest such checkpoint).

        `background` (periodic saves): with checkpoint.async_save, return once the
        state is snapshotted; a later `after_step` or `at_exit` publishes it.
        `final`: the run reached its last iteration: checkpoint.final_format, not
        checkpoint.format (docs/training.md, "Checkpoint formats and sizes").
        """
        ck = self.cfg.checkpoint
        args = (self.root, self.engine, state, self.config_dict)
        kwargs: _SaveOptions = {
            "keep_last": ck.keep_last,
            "finite": self._finite if finite is None else finite,
            "optimizer_format": ck.final_format if final else ck.format,
        }
        with self.watchdog.long_operation("a checkpoint save"), self.engine.params_in_sync():
            if self.background is None:
                save_checkpoint(*args, **kwargs)
            elif background:
                self.background.start(*args, **kwargs)
            else:
                self.background.wait()
                save_checkpoint(*args, **kwargs)

    def saved_at(self, iteration: int) -> bool:
        """Collective: whether `iteration` is checkpointed (a background save in flight is
        published first)."""
        self._publish(wait=True)
        return os.path.isdir(iteration_dir(self.root, iteration))

    def abort(self) -> None:
        """Stop a background writer without publishing: the run failed while it wrote."""
        if self.background is not None:
            self.background.abort()

    def _publish(self, wait: bool) -> None:
        """Collective: publish the background checkpoint once every rank wrote it."""
        if self.background is None or self.background.in_flight is None:
            return
        if wait:
            with self.watchdog.long_operation("waiting for a background checkpoint"):
                self.background.wait()
        else:
            self.background.poll()
