"""The engine in a process of its own (vLLM V1's shape): the HTTP side never takes its GIL.

In one process, the event loop (HTTP, JSON, SSE, tokenising) and the engine
thread share one GIL, and a small model's forward is mostly Python holding
it: at 16 streaming clients the engine ran about two thirds of the time
(docs/serve.md, "Benchmark"). Here the child process runs the `Engine` (the
model, the scheduler, sampling, detokenising and stop strings); this process
keeps the routes and talks to it over two pipes:

    to the child:   ("submit", [job, ...]) | ("cancel", id) | ("stop",)
    from the child: ("ready",) | ("failed", message) once at start-up, then
                    ("events", [(id, text, finish, new tokens, new logprobs,
                    prompt scores), ...], state) after every step that has any

`EngineProcess` has the `Engine`'s interface (submit, cancel, state, start,
stop), so the routes do not know which one runs. It counts what it holds
itself, so a full queue is refused (QueueFull) without asking the child. A
child that dies fails the requests in flight with its exit code, and later
requests get EngineGone (503). The child ends when this process does (its
pipe closes).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

from chatbaker_megatron.serve.engine import (
    Delivery,
    Engine,
    EngineGone,
    EngineSettings,
    Finished,
    GenerationRequest,
    QueueFull,
    freeze_long_lived,
    load_engine,
    to_event_loops,
)

log = logging.getLogger(__name__)

# Seconds the child may take to finish its rows and exit after ("stop",).
STOP_TIMEOUT = 30.0


def _job(request_id: int, request: GenerationRequest) -> tuple[int, dict[str, Any]]:
    """What the child needs of a request: its id here, and what to generate."""
    return request_id, {
        "prompt_ids": request.prompt_ids,
        "sampling": request.sampling,
        "stop_ids": request.stop_ids,
        "stop_strings": request.stop_strings,
        "logprobs": request.logprobs,
        "prompt_logprobs": request.prompt_logprobs,
    }


class _Outbox:
    """The child's delivery: each step's events, as what is new for each request since the
    last step, sent in one message with the engine's state."""

    def __init__(self, out: Connection) -> None:
        self.out = out
        self.ids: dict[int, int] = {}  # id(child request) -> the parent's request id
        self.sent: dict[int, tuple[int, int]] = {}  # tokens and logprobs already sent
        self.engine: Engine | None = None

    def __call__(self, deliveries: Delivery) -> None:
        updates: dict[int, list[Any]] = {}
        for request, event in deliveries:
            key = id(request)
            update = updates.get(key)
            if update is None:
                tokens, scores = self.sent.get(key, (0, 0))
                update = updates[key] = [
                    self.ids[key],
                    "",
                    None,
                    request.token_ids[tokens:],
                    request.token_logprobs[scores:],
                    request.prompt_scores if key not in self.sent else None,
                ]
                self.sent[key] = (len(request.token_ids), len(request.token_logprobs))
            if isinstance(event, Finished):
                update[2] = event
                del self.ids[key], self.sent[key]
            else:
                update[1] += event
        assert self.engine is not None
        self.out.send(("events", list(updates.values()), self.engine.state()))


def _child(settings: EngineSettings, inbox: Connection, out: Connection) -> None:
    """The engine process: load the model, then run requests until told to stop or orphaned."""
    # The server stops it (or its pipe's end does): a Ctrl-C reaches the whole process
    # group, and the child must not die with a traceback before the server's streams end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import torch

    try:
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        outbox = _Outbox(out)
        engine, _ = load_engine(settings, outbox)
    except Exception as err:  # the parent says it in one line and exits
        out.send(("failed", f"{type(err).__name__}: {err}"))
        return
    outbox.engine = engine
    engine.start()
    out.send(("ready",))
    requests: dict[int, GenerationRequest] = {}
    try:
        while True:
            message = inbox.recv()
            if message[0] == "stop":
                break
            if message[0] == "cancel":
                request = requests.pop(message[1], None)
                if request is not None:
                    engine.cancel(request)
                continue
            jobs = []
            for request_id, fields in message[1]:
                request = GenerationRequest(**fields)
                outbox.ids[id(request)] = request_id
                requests[request_id] = request
                jobs.append(request)
            engine.submit(*jobs)  # the parent counted: never more than the engine holds
            # Ended requests are forgotten lazily: only a cancel can name them again.
            for request_id in [i for i, r in requests.items() if r.finish is not None]:
                del requests[request_id]
    except EOFError:  # the parent is gone
        pass
    engine.stop()  # every request in flight ends (cancelled) and hears of it
    out.close()


class EngineProcess:
    """The `Engine`'s interface, run by an engine in a child process (see the module doc)."""

    def __init__(self, settings: EngineSettings) -> None:
        self.max_batch = settings.max_batch
        self.max_queue = settings.max_queue
        # spawn: a fresh interpreter (no fork of this process's threads, CUDA safe).
        context = multiprocessing.get_context("spawn")
        inbox_reader, self._inbox = context.Pipe(duplex=False)
        self._events, out_writer = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_child,
            args=(settings, inbox_reader, out_writer),
            name="serve-engine",
            daemon=True,
        )
        self._lock = threading.Lock()  # the inbox's writers, the ids, the counts
        self._requests: dict[int, GenerationRequest] = {}
        self._next_id = 0
        self._state: dict[str, int] = {
            "completed": 0,
            "cancelled": 0,
            "failed": 0,
            "generated_tokens": 0,
        }
        self._running = 0
        self._gone: str | None = None
        self._reader = threading.Thread(target=self._read, name="serve-engine-events", daemon=True)
        self._process.start()
        inbox_reader.close()
        out_writer.close()
        try:
            ready = self._events.recv()
        except EOFError:
            ready = ("failed", f"the engine process exited with code {self._exitcode()}")
        if ready[0] != "ready":
            self._process.join()
            reason = " ".join(str(ready[1]).split())
            raise ValueError(f"{settings.hf_dir}: the engine could not start: {reason}")

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def start(self) -> None:
        freeze_long_lived()  # this process's too: the HTTP side's streams stall alike
        self._reader.start()

    def stop(self) -> None:
        with self._lock, contextlib.suppress(OSError):
            self._inbox.send(("stop",))
        self._process.join(STOP_TIMEOUT)
        if self._process.is_alive():
            log.error("the engine process did not stop in %.0f s; killing it", STOP_TIMEOUT)
            self._process.kill()
            self._process.join()
        if self._reader.is_alive():
            self._reader.join()

    def submit(self, *requests: GenerationRequest) -> None:
        """Queue requests, all or none: QueueFull past max_batch + max_queue, EngineGone
        when the engine process is not running."""
        with self._lock:
            if self._gone is not None:
                raise EngineGone(self._gone)
            held = len(self._requests)
            if held + len(requests) > self.max_batch + self.max_queue:
                running = min(self._running, held)
                raise QueueFull(
                    f"{running} requests running and {held - running} waiting; "
                    f"{len(requests)} more would exceed --max-batch {self.max_batch} "
                    f"+ --max-queue {self.max_queue}"
                )
            jobs = []
            for request in requests:
                self._requests[self._next_id] = request
                jobs.append(_job(self._next_id, request))
                self._next_id += 1
            self._inbox.send(("submit", jobs))

    def cancel(self, request: GenerationRequest) -> None:
        """Free the request's row (or queue place) at the child's next step; no-op once ended."""
        with self._lock:
            ids = [i for i, held in self._requests.items() if held is request]
            if ids and self._gone is None:
                with contextlib.suppress(OSError):
                    self._inbox.send(("cancel", ids[0]))

    def state(self) -> dict[str, int]:
        with self._lock:
            held = len(self._requests)
            running = min(self._running, held)
            return {
                "running": running,
                "waiting": held - running,
                "max_batch": self.max_batch,
                "max_queue": self.max_queue,
                **self._state,
            }

    def _exitcode(self) -> int | None:
        self._process.join(5)
        return self._process.exitcode

    def _read(self) -> None:
        """This process's side: the child's events to the requests' event loops."""
        while True:
            try:
                message = self._events.recv()
            except EOFError:
                break
            _, updates, state = message
            deliveries: Delivery = []
            with self._lock:
                self._running = state["running"]
                self._state = {k: state[k] for k in self._state}
                for request_id, text, finish, tokens, scores, prompt_scores in updates:
                    # Filled here as the in-process engine fills them in its thread: the
                    # routes read them once the request's events say so.
                    request = self._requests[request_id]
                    request.token_ids += tokens
                    request.token_logprobs += scores
                    if prompt_scores:
                        request.prompt_scores = prompt_scores
                    if text:
                        request.text += text
                        deliveries.append((request, text))
                    if finish is not None:
                        request.finish = finish
                        deliveries.append((request, finish))
                        del self._requests[request_id]
            to_event_loops(deliveries)
        self._engine_gone()

    def _engine_gone(self) -> None:
        """The child ended: fail what it held (after a stop it held nothing)."""
        with self._lock:
            if self._gone is None:
                self._gone = f"the engine process ended (exit code {self._exitcode()})"
            orphans = list(self._requests.values())
            self._requests.clear()
            self._state["failed"] += len(orphans)
        end = Finished("error", self._gone)
        for request in orphans:
            request.finish = end
        to_event_loops([(request, end) for request in orphans])
