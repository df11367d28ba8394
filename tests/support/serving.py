"""A FastAPI app served by uvicorn in a background thread, for the serve tests and benchmark."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(app: FastAPI, stop_within: float = 30, **config: Any) -> Iterator[str]:
    """Serve `app` on a free loopback port until the block ends; yields its base URL.

    `config`: more uvicorn settings. Leaving the block stops the server as SIGTERM
    does; RuntimeError when it has not stopped within `stop_within` seconds."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # uvicorn offers no event for this
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=stop_within)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"the server did not stop within {stop_within} s")
