"""The continuous-batching scheduler: one thread runs the model for every open request.

Each loop: cancelled rows leave, waiting requests join (prefilled together)
up to `max_batch`, every row draws its next token from its own logits with
its own seeded generator, all rows in one batched call of the sampling code
the Generator uses (so a seed gives the same reply alone or batched),
finished rows leave, the step's text and ends are handed to the event loops
(before the forward, which they need not wait for), and one batched forward
appends the drawn tokens. The
engine holds at most `max_batch + max_queue` requests (running or waiting);
one more is refused (QueueFull, HTTP 429). Text reaches the request's
asyncio queue through TextStream, so a streamed piece never ends inside a
UTF-8 character or a stop string.

Faults are isolated: an exception while admitting, prefilling, sampling or
decoding the text of one request ends that request alone, with its own error
(a batch prefill that fails is retried one request at a time); only a
failure of the batch's shared forward step ends every running request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer
from chatbaker_megatron.inference.backends import HFBackend
from chatbaker_megatron.inference.generator import TextStream
from chatbaker_megatron.inference.sampling import SamplingConfig, next_tokens
from chatbaker_megatron.serve.batching import BatchedDecoder
from chatbaker_megatron.serve.logprobs import TokenLogprob, scored

if TYPE_CHECKING:  # imported when the model is loaded (transformers takes seconds to import)
    from transformers import LlamaForCausalLM

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    pass


class EngineGone(RuntimeError):
    """The engine is not running (its process failed or was stopped)."""


def check_limits(max_batch: int, max_queue: int) -> None:
    if max_batch < 1 or max_queue < 0:
        raise ValueError(
            f"--max-batch={max_batch}, --max-queue={max_queue}: expected >= 1 and >= 0"
        )


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
    # Log-probabilities to report: None = off, k = each token's and the k most likely.
    logprobs: int | None = None
    prompt_logprobs: bool = False  # also score the prompt's tokens (OpenAI's echo)
    token_ids: list[int] = field(default_factory=list)  # as generated, a stop token included
    token_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_scores: list[TokenLogprob | None] = field(default_factory=list)  # [0] is None
    text: str = ""  # the reply as far as it was handed out (all of it once finished)
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
        queue = self.events
        assert queue is not None, "pieces() of a request the engine was never given"
        while True:
            events = [await queue.get()]
            while not queue.empty():
                events.append(queue.get_nowait())
            text = "".join(event for event in events if isinstance(event, str))
            if text:
                yield text
            if isinstance(events[-1], Finished):
                return


Delivery = list[tuple[GenerationRequest, str | Finished]]


def _put_all(deliveries: Delivery) -> None:
    for request, event in deliveries:
        assert request.events is not None  # to_event_loops hands over only queued requests
        request.events.put_nowait(event)


def to_event_loops(deliveries: Delivery) -> None:
    """Hand a step's pieces and ends to the requests' event loops: one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, Delivery] = {}
    for request, event in deliveries:
        if request.loop is not None and request.events is not None:
            by_loop.setdefault(request.loop, []).append((request, event))
    for loop, queued in by_loop.items():
        # RuntimeError: the event loop closed (the server is shutting down).
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_put_all, queued)


@dataclass(frozen=True)
class EngineSettings:
    """What an engine is built from: the HF folder and the engine's limits."""

    hf_dir: Path
    max_batch: int
    max_queue: int
    threads: int | None = None  # torch intra-op threads (engine_process.py sets them)


def load_engine(
    settings: EngineSettings, deliver: Callable[[Delivery], None] = to_event_loops
) -> tuple[Engine, HFBackend]:
    """The folder's model, loaded in this process, and the engine that runs it."""
    backend = HFBackend(settings.hf_dir)
    engine = Engine(
        backend.model,
        backend.tokenizer,
        backend.max_length,
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        deliver=deliver,
    )
    return engine, backend


def freeze_long_lived() -> None:
    """Move everything loaded by now out of the cyclic collector's reach.

    What a server process holds at start (torch, transformers, the model, the app:
    ~0.5 M objects) lives as long as it does. The collector's full collections (due
    each time a quarter as many objects again have outlived two younger collections)
    would otherwise walk all of it: ~300 ms with the demo model loaded, every stream
    stalled.
    """
    gc.collect()
    gc.freeze()


class RequestEngine(Protocol):
    """What the routes use of an engine: this thread's `Engine`, or `EngineProcess`."""

    max_batch: int
    max_queue: int

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def submit(self, *requests: GenerationRequest) -> None: ...

    def cancel(self, request: GenerationRequest) -> None: ...

    def state(self) -> dict[str, int]: ...


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
        self.prompt_length = len(request.prompt_ids)
        seed = request.sampling.seed
        self.draws = torch.Generator().manual_seed(seed) if seed is not None else None
        self.stops = {tokenizer.eos_id, *request.stop_ids}
        self.context = list(request.prompt_ids)
        self.budget = min(request.sampling.max_new_tokens, max_length - len(request.prompt_ids))
        self.stream = TextStream(tokenizer, request.stop_strings, self._handed_out)
        self.post = post
        self.logits: torch.Tensor | None = None

    def _handed_out(self, text: str) -> None:
        self.request.text += text
        self.post(self.request, text)

    @property
    def generated(self) -> list[int]:
        return self.context[self.prompt_length :]

    def accept(self, token: int) -> Finished | None:
        """Take the drawn next token; how the request ended, if this token ends it."""
        if self.request.logprobs is not None:
            assert self.logits is not None  # every step sets them before a token is drawn
            self.request.token_logprobs += scored(self.logits[None], [token], self.request.logprobs)
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
        model: LlamaForCausalLM,
        tokenizer: ChatBakerTokenizer,
        max_length: int,
        *,
        max_batch: int = 16,
        max_queue: int = 64,
        deliver: Callable[[Delivery], None] = to_event_loops,
    ) -> None:
        """`deliver` takes each step's pieces and ends, in the engine thread: by default
        to the requests' event loops (engine_process.py sends them to another process)."""
        check_limits(max_batch, max_queue)
        self.decoder = BatchedDecoder(model)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._waiting: deque[GenerationRequest] = deque()
        self._rows: list[_Row] = []
        self._held = 0  # requests submitted and not yet ended: waiting, joining or running
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="serve-engine", daemon=True)
        # What the requests are to hear of this step, handed over together by _flush.
        self._outbox: Delivery = []
        self._deliver = deliver
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "generated_tokens": 0}

    def start(self) -> None:
        freeze_long_lived()
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join()

    def submit(self, *requests: GenerationRequest) -> None:
        """Queue requests (their `loop` and `events` set), all or none; QueueFull when the
        engine would hold more than max_batch running + max_queue waiting."""
        with self._wake:
            if self._held + len(requests) > self.max_batch + self.max_queue:
                waiting = len(self._waiting)
                raise QueueFull(
                    f"{self._held - waiting} requests running and {waiting} waiting; "
                    f"{len(requests)} more would exceed --max-batch {self.max_batch} "
                    f"+ --max-queue {self.max_queue}"
                )
            self._held += len(requests)
            self._waiting.extend(requests)
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
            self._held -= 1
            self.counts[counter] += 1
            self.counts["generated_tokens"] += len(request.token_ids)
        self._post(request, finish)

    def _post(self, request: GenerationRequest, event: str | Finished) -> None:
        self._outbox.append((request, event))

    def _flush(self) -> None:
        """Hand the step's pieces and ends over, all at once."""
        if self._outbox:
            outbox, self._outbox = self._outbox, []
            self._deliver(outbox)

    def _drop(self, indices: list[int]) -> None:
        self.decoder.remove(indices)
        gone = set(indices)
        self._rows = [row for i, row in enumerate(self._rows) if i not in gone]

    def _admit(self) -> None:
        """Waiting requests take the free rows, prefilled in one forward pass."""
        joining: list[_Row] = []
        while len(self._rows) + len(joining) < self.max_batch:
            with self._wake:
                if not self._waiting:
                    break
                request = self._waiting.popleft()
            if request.cancelled.is_set():
                self._end(request, Finished("cancelled"))
                continue
            try:
                joining.append(_Row(request, self.tokenizer, self.max_length, self._post))
            except Exception as err:
                self._fail(request, err, "admitting")
        if not joining:
            return
        try:
            self._prefill(joining)
        except Exception:  # the batch is untouched: find the request at fault alone
            for row in joining:
                try:
                    self._prefill([row])
                except Exception as err:
                    self._fail(row.request, err, "prefilling")

    def _prefill(self, joining: list[_Row]) -> None:
        """One forward for the joining rows; they join the batch once it succeeded."""
        every = any(row.request.prompt_logprobs for row in joining)
        logits = self.decoder.add([row.request.prompt_ids for row in joining], every_position=every)
        first = len(self._rows)
        self._rows += joining
        for row, row_logits in zip(joining, logits):
            row.logits = row_logits[-1] if every else row_logits
        if not every:
            return
        failed = {}
        width = logits.shape[1]
        for i, (row, row_logits) in enumerate(zip(joining, logits)):
            request = row.request
            if not request.prompt_logprobs:
                continue
            prompt = request.prompt_ids
            try:
                scores = scored(
                    row_logits[width - len(prompt) : -1], prompt[1:], request.logprobs or 0
                )
            except Exception as err:  # the row is in the batch: it leaves like a finished one
                log.exception("scoring a prompt failed; ending its request alone")
                failed[first + i] = Finished("error", f"{type(err).__name__}: {err}")
                continue
            request.prompt_scores = [None, *scores]
        self._leave(failed)

    def _fail(self, request: GenerationRequest, err: Exception, doing: str) -> None:
        log.exception("%s a request failed; ending it alone", doing)
        self._end(request, Finished("error", f"{type(err).__name__}: {err}"))

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
        for i, (row, token) in enumerate(zip(self._rows, self._sample())):
            try:
                if isinstance(token, Exception):
                    raise token
                finish = row.accept(token)
                if finish is not None:
                    row.stream.finish()
            except Exception as err:
                log.exception("sampling a request failed; ending it alone")
                finish = Finished("error", f"{type(err).__name__}: {err}")
            if finish is not None:
                done[i] = finish
        self._leave(done)
        # Out before the forward: every token (the first included) reaches its client
        # a forward sooner, and the event loop streams it while the model runs.
        self._flush()
        if self._rows:
            logits = self.decoder.step([row.context[-1] for row in self._rows])
            for row, row_logits in zip(self._rows, logits):
                row.logits = row_logits

    def _sample(self) -> list[int | Exception]:
        """Every row's next token, in one batched call; when that fails, row by row,
        so only the rows at fault get their exception instead of a token."""
        rows = self._rows
        logits = [row.logits for row in rows if row.logits is not None]
        assert len(logits) == len(rows)  # the step before set every row's
        try:
            return list(
                next_tokens(
                    torch.stack(logits),
                    [row.context for row in rows],
                    [row.request.sampling for row in rows],
                    [row.draws for row in rows],
                    [row.generated for row in rows],
                )
            )
        except Exception:
            tokens: list[int | Exception] = []
            for row, row_logits in zip(rows, logits):
                try:
                    tokens += next_tokens(
                        row_logits[None],
                        [row.context],
                        [row.request.sampling],
                        [row.draws],
                        [row.generated],
                    )
                except Exception as err:
                    tokens.append(err)
            return tokens

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
        # Stopped: the running rows are freed and their requests told.
        self._leave({i: Finished("cancelled") for i in range(len(self._rows))})
        while self._waiting:
            self._end(self._waiting.popleft(), Finished("cancelled"))
        self._flush()
