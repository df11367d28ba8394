"""Processes forked from one forkserver that imported torch, megatron and the trainer once.

A fresh interpreter spends seconds of CPU importing those; the suite starts
dozens of ranks and command lines on a 2-core machine. Forking the pytest
process itself is unsafe once torch ran threads in it, so the children come
from a forkserver (a clean, single-threaded process) that has the imports
already. Used by the multi-rank pools (tests/parallel/harness.py) and by
`run_cli`, for command lines whose own process state matters (a dry run's
fake world) but whose imports do not. Tests about what an import prints
(tests/unit/test_quiet.py) or about the launcher start real subprocesses.
The forkserver is a fresh interpreter: tests/support/site/sitecustomize.py
installs NCCL's device rules in it as it preloads the platform, and every
process forked from it inherits them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import warnings
from multiprocessing.context import ForkServerContext

PRELOAD = ["torch", "chatbaker_megatron.training.trainer", "tests.parallel.harness", __name__]


def context() -> ForkServerContext:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _cli_main(argv: list[str], out: str, err: str, ignore_warnings: bool) -> None:
    """The child: `chatbaker ARGV` with stdout/stderr in files, its exit code as ours."""
    from chatbaker_megatron import cli

    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        os.dup2(stdout.fileno(), 1)
        os.dup2(stderr.fileno(), 2)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    if ignore_warnings:
        warnings.simplefilter("ignore")
    code: int | str | None = 0
    try:
        code = cli.main(argv)
    except SystemExit as done:
        code = done.code
    sys.stdout.flush()
    if isinstance(code, str):  # sys.exit("message"), as the interpreter would print it
        print(code, file=sys.stderr)
        code = 1
    sys.stderr.flush()
    os._exit(code or 0)


def run_cli(
    argv: list[str], timeout: float, *, ignore_warnings: bool = False
) -> subprocess.CompletedProcess:
    """`chatbaker ARGV` as subprocess.run would give it (text output), in a forked process."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        proc = context().Process(target=_cli_main, args=(argv, out, err, ignore_warnings))
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(["chatbaker", *argv], timeout)
        with open(out, encoding="utf-8") as o, open(err, encoding="utf-8") as e:
            stdout, stderr = o.read(), e.read()
    return subprocess.CompletedProcess(["chatbaker", *argv], proc.exitcode, stdout, stderr)
