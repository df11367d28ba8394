"""The continuous-batching scheduler: one thread runs the model for every open request.

Each loop: cancelled rows leave, waiting requests join (prefilled together)
up to `max_batch`, every row draws its next token from its own logits with
its own seeded generator, all rows in one batched call of the sampling code
the Generator uses (so a seed gives the same reply alone or batched),
finished rows leave, and one batched forward appends the drawn tokens. At
most `max_queue` requests wait for a row; one more is refused (QueueFull,
HTTP 429). Text reaches the request's asyncio queue through TextStream, so a
streamed piece never ends inside a UTF-8 character or a stop string.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer
from chatbaker_megatron.inference.generator import TextStream
from chatbaker_megatron.inference.sampling import SamplingConfig, next_tokens
from chatbaker_megatron.serve.batching import BatchedDecoder

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    pass


@dataclass(frozen=True)
class Finished:
    reason: str  # stop | length | cancelled | error
    error: str | None = None


@dataclass
class GenerationRequest:
    """One generation: what to run, and (filled by the engine) what came of it."""

    prompt_ids: list[int]
    sampling: SamplingConfig
    stop_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    token_ids: list[int] = field(default_factory=list)  # as generated, a stop token included
    text: str = ""
    finish: Finished | None = None
    # Pieces of text, then one Finished, handed to the event loop that waits for them.
    events: asyncio.Queue | None = None
    loop: asyncio.AbstractEventLoop | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    async def pieces(self):
        """The reply text as it is generated; ends when the request finishes.

        A reader that fell behind gets what piled up as one piece: one SSE event
        for several tokens, rather than a backlog that slows every stream.
        """
        while True:
            events = [await self.events.get()]
            while not self.events.empty():
                events.append(self.events.get_nowait())
            text = "".join(event for event in events if isinstance(event, str))
            if text:
                yield text
            if isinstance(events[-1], Finished):
                return


def _put_all(deliveries: list[tuple[GenerationRequest, str | Finished]]) -> None:
    for request, event in deliveries:
        request.events.put_nowait(event)


class _Row:
    """A request that holds a batch row: its stream, draws and remaining budget."""

    def __init__(
        self,
        request: GenerationRequest,
        tokenizer: ChatBakerTokenizer,
        max_length: int,
        post: Callable[[GenerationRequest, str | Finished], None],
    ) -> None:
        self.request = request
        seed = request.sampling.seed
        self.draws = torch.Generator().manual_seed(seed) if seed is not None else None
        self.stops = {tokenizer.eos_id, *request.stop_ids}
        self.context = list(request.prompt_ids)
        self.budget = min(request.sampling.max_new_tokens, max_length - len(request.prompt_ids))
        self.stream = TextStream(tokenizer, request.stop_strings, lambda text: post(request, text))
        self.logits: torch.Tensor | None = None

    def accept(self, token: int) -> Finished | None:
        """Take the drawn next token; how the request ended, if this token ends it."""
        self.request.token_ids.append(token)
        self.context.append(token)
        if token in self.stops or self.stream.push(token):
            return Finished("stop")
        if len(self.request.token_ids) >= self.budget:
            return Finished("length")
        return None


class Engine:
    """Runs requests on a transformers causal LM in a background thread."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: ChatBakerTokenizer,
        max_length: int,
        *,
        max_batch: int = 16,
        max_queue: int = 64,
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(
                f"--max-batch={max_batch}, --max-queue={max_queue}: expected >= 1 and >= 0"
            )
        self.decoder = BatchedDecoder(model)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._waiting: deque[GenerationRequest] = deque()
        self._rows: list[_Row] = []
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="serve-engine", daemon=True)
        # What the requests are to hear of this step, handed over together by _flush.
        self._outbox: list[tuple[GenerationRequest, str | Finished]] = []
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "generated_tokens": 0}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join()

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request (its `loop` and `events` set); QueueFull when the queue is full."""
        with self._wake:
            if len(self._waiting) >= self.max_queue and (
                self._waiting or len(self._rows) >= self.max_batch
            ):
                raise QueueFull(
                    f"{len(self._rows)} requests running and {len(self._waiting)} waiting "
                    f"(--max-batch {self.max_batch}, --max-queue {self.max_queue})"
                )
            self._waiting.append(request)
            self._wake.notify()

    def cancel(self, request: GenerationRequest) -> None:
        """Free the request's row (or queue place) at the next step; no-op once finished."""
        if request.finish is None:
            request.cancelled.set()
            with self._wake:
                self._wake.notify()

    def state(self) -> dict[str, int]:
        with self._wake:
            return {
                "running": len(self._rows),
                "waiting": len(self._waiting),
                "max_batch": self.max_batch,
                "max_queue": self.max_queue,
                **self.counts,
            }

    def _end(self, request: GenerationRequest, finish: Finished) -> None:
        request.finish = finish
        counter = {"stop": "completed", "length": "completed", "error": "failed"}.get(
            finish.reason, finish.reason
        )
        with self._wake:
            self.counts[counter] += 1
            self.counts["generated_tokens"] += len(request.token_ids)
        self._post(request, finish)

    def _post(self, request: GenerationRequest, event: str | Finished) -> None:
        if request.loop is not None and request.events is not None:
            self._outbox.append((request, event))

    def _flush(self) -> None:
        """Hand the step's pieces and ends to their event loops: one wake-up per loop per step."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for request, event in self._outbox:
            by_loop.setdefault(request.loop, []).append((request, event))
        self._outbox = []
        for loop, deliveries in by_loop.items():
            # RuntimeError: the event loop closed (the server is shutting down).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_put_all, deliveries)

    def _drop(self, indices: list[int]) -> None:
        self.decoder.remove(indices)
        gone = set(indices)
        self._rows = [row for i, row in enumerate(self._rows) if i not in gone]

    def _admit(self) -> None:
        """Waiting requests take the free rows, prefilled in one forward pass."""
        joining = []
        while len(self._rows) + len(joining) < self.max_batch:
            with self._wake:
                if not self._waiting:
                    break
                request = self._waiting.popleft()
            if request.cancelled.is_set():
                self._end(request, Finished("cancelled"))
                continue
            joining.append(_Row(request, self.tokenizer, self.max_length, self._post))
        if not joining:
            return
        try:
            logits = self.decoder.add([row.request.prompt_ids for row in joining])
        except Exception as err:  # the batch is untouched: only these requests fail
            log.exception("prefill failed; ending the %d joining requests", len(joining))
            for row in joining:
                self._end(row.request, Finished("error", f"{type(err).__name__}: {err}"))
            return
        for row, row_logits in zip(joining, logits):
            row.logits = row_logits
        self._rows += joining

    def _leave(self, ended: dict[int, Finished]) -> None:
        """Free the rows first, then tell their requests: whoever hears of the end sees the row free."""
        requests = [self._rows[i].request for i in ended]
        self._drop(list(ended))
        for request, finish in zip(requests, ended.values()):
            self._end(request, finish)

    def _step(self) -> None:
        self._leave(
            {
                i: Finished("cancelled")
                for i, row in enumerate(self._rows)
                if row.request.cancelled.is_set()
            }
        )
        self._admit()
        if not self._rows:
            return
        done = {}
        tokens = next_tokens(
            torch.stack([row.logits for row in self._rows]),
            [row.context for row in self._rows],
            [row.request.sampling for row in self._rows],
            [row.draws for row in self._rows],
        )
        for i, (row, token) in enumerate(zip(self._rows, tokens)):
            finish = row.accept(token)
            if finish is not None:
                row.request.text = row.stream.finish()
                done[i] = finish
        self._leave(done)
        if self._rows:
            logits = self.decoder.step([row.context[-1] for row in self._rows])
            for row, row_logits in zip(self._rows, logits):
                row.logits = row_logits

    def _fail_all(self, err: Exception) -> None:
        log.exception("generation failed; ending the %d running requests", len(self._rows))
        self._leave(
            {i: Finished("error", f"{type(err).__name__}: {err}") for i in range(len(self._rows))}
        )

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and not self._rows and not self._waiting:
                    self._wake.wait()
                if self._stopped:
                    break
            try:
                self._step()
            except Exception as err:  # a bad request must not stop the server
                self._fail_all(err)
            self._flush()
        for row in self._rows:
            self._end(row.request, Finished("cancelled"))
        while self._waiting:
            self._end(self._waiting.popleft(), Finished("cancelled"))
        self._flush()
