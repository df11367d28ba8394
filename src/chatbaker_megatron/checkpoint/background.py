"""Checkpoints written in the background while training goes on (`checkpoint.async_save`).

A save takes a snapshot (megatron's async save forks a writer process per
rank after staging the tensors in host memory) and returns to training; the
files land in `iter_N.tmp/` meanwhile. Every iteration the trainer calls
`poll()`, one small collective: once every rank's writer has finished, each
rank checksums its files and rank 0 writes the manifest, renames the
directory and moves `latest` (checkpoint/save.py `_complete`), so a
background checkpoint is published with the same atomicity as a synchronous
one. At most one save is in flight: a new one first waits for the previous
one, and so does every exit path that saves.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from megatron.core.dist_checkpointing.strategies.torch import get_async_strategy

from chatbaker_megatron.checkpoint.save import (
    ASYNC_STRATEGY,
    start_background_write,
    training_state,
)
from chatbaker_megatron.checkpoint.state import (
    LEGACY_OPTIMIZER_FORMAT,
    ModelAndOptimizer,
    TrainState,
)

log = logging.getLogger(__name__)


class BackgroundSaves:
    """At most one checkpoint in flight; published by `poll` or `wait` on every rank."""

    def __init__(self) -> None:
        _strategy, queue_class = get_async_strategy(ASYNC_STRATEGY, "AsyncCallsQueue")
        self._queue = queue_class()
        self._in_flight: tuple[str, float] | None = None  # (final dir, start time)

    @property
    def in_flight(self) -> str | None:
        """The directory of the checkpoint being written, if any."""
        return self._in_flight[0] if self._in_flight else None

    def start(
        self,
        root: str,
        parts: ModelAndOptimizer,
        state: TrainState,
        config: dict[str, Any],
        keep_last: int,
        finite: bool = True,
        optimizer_format: str = LEGACY_OPTIMIZER_FORMAT,
    ) -> str:
        """Collective: snapshot the training state and write it in the background."""
        self.wait()
        sharded = training_state(parts, state, config, optimizer_format)
        final, request = start_background_write(
            root, state.iteration, sharded, keep_last, finite=finite
        )
        self._queue.schedule_async_request(request)
        self._in_flight = (final, time.monotonic())
        return final

    def poll(self) -> str | None:
        """Collective: publish the checkpoint in flight if every rank wrote it; its dir, or None."""
        return self._finalize(blocking=False)

    def wait(self) -> str | None:
        """Collective: wait for the checkpoint in flight and publish it; its dir, or None."""
        return self._finalize(blocking=True)

    def abort(self) -> None:
        """Stop a writer without publishing (an error path; its `.tmp` is removed at the next save)."""
        self._queue.close(abort=True)
        self._in_flight = None

    def _finalize(self, blocking: bool) -> str | None:
        if self._in_flight is None:
            return None
        try:
            if not self._queue.maybe_finalize_async_calls(blocking=blocking):
                return None
        except BaseException:  # a failed write raised the same CheckpointError on every rank
            self._in_flight = None
            raise
        final, started = self._in_flight
        self._in_flight = None
        log.info(
            "saved checkpoint %s (written in the background in %.1f s)",
            final,
            time.monotonic() - started,
        )
        return final
