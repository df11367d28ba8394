"""Preprocess leaves no partial files on any exit path: full or read-only disk, SIGTERM, kill -9."""

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from chatbaker_megatron.cli import main
from chatbaker_megatron.data.preprocess import encode_pool, indexed_writer
from tests.data.preprocess.test_preprocess import leftovers, sample_texts, write_jsonl


class FullDiskFile:
    """A file on a disk with `room` bytes left: writes past it fail, and so does close(),
    as a buffered file's does when its tail cannot be flushed."""

    def __init__(self, path: str, room: int) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.room, self.full = room, False

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.full = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def preprocess_cli(demo, source, prefix, *extra):
    return main(
        [
            "preprocess",
            "--input",
            str(source),
            "--tokenizer",
            str(demo.tokenizer),
            "--output-prefix",
            str(prefix),
            "--no-progress",
            *extra,
        ]
    )


def test_full_disk_is_one_line_with_bytes_needed_and_leaves_nothing(
    demo, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(encode_pool, "CHUNK_BYTES", 4096)

    class OnFullDisk(indexed_writer.IndexedFileWriter):
        def __init__(self, bin_path, dtype):
            super().__init__(bin_path, dtype)
            self.data_file.close()
            self.data_file = FullDiskFile(bin_path, room=20_000)

    monkeypatch.setattr(indexed_writer, "IndexedFileWriter", OnFullDisk)
    source = write_jsonl(tmp_path / "in.jsonl", sample_texts(60))
    rc = preprocess_cli(demo, source, tmp_path / "out", "--workers", "0")
    err = capsys.readouterr().err
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    partial = f"{tmp_path}/out.partial-{socket.gethostname()}-{os.getpid()}.bin"
    assert lines[0].startswith(
        f"chatbaker preprocess: error: no space left on device writing {partial}: "
        "the output needs about "
    ), lines[0]
    needed = int(lines[0].split(" (")[1].split(" bytes")[0].replace(",", ""))
    assert needed > 20_000  # more than what fitted
    assert "of the input written" in lines[0] and "free there" in lines[0]
    assert leftovers(tmp_path) == [] and not os.path.exists(tmp_path / "out.bin")


def test_read_only_output_is_one_line(demo, tmp_path, monkeypatch, capsys):
    def read_only(path, dtype):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(indexed_writer, "IndexedFileWriter", read_only)
    source = write_jsonl(tmp_path / "in.jsonl", sample_texts(10))
    rc = preprocess_cli(demo, source, tmp_path / "out", "--workers", "0")
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert "error: read-only file system writing " in err and "out.partial-" in err
    assert "no output written yet" in err
    assert leftovers(tmp_path) == []


def test_abort_removes_the_partial_files_even_when_close_fails(tmp_path):
    writer = indexed_writer.AtomicIndexedWriter(str(tmp_path / "out"), np.uint16)
    writer.builder.data_file.close()
    writer.builder.data_file = FullDiskFile(f"{writer.partial}.bin", room=0)
    with pytest.raises(OSError):
        writer.builder.data_file.write(b"tokens")
    writer.abort()  # before: close() raised here, a second traceback, the .bin left behind
    assert leftovers(tmp_path) == []


SLOW_PREPROCESS = """
import pathlib, sys, time
from chatbaker_megatron.cli import main
from chatbaker_megatron.data.preprocess import encode_pool, indexed_writer

encode_pool.CHUNK_BYTES = 4096
real_add = indexed_writer.AtomicIndexedWriter.add

def add_then_wait(self, chunk):  # the first chunk is on disk: stop us now
    real_add(self, chunk)
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(300)

indexed_writer.AtomicIndexedWriter.add = add_then_wait
sys.exit(main(["preprocess", *sys.argv[2:]]))
"""


def test_sigterm_mid_run_removes_partial_files(demo, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", sample_texts(60))
    ready = tmp_path / "first-chunk-written"
    args = ["--input", source, "--tokenizer", str(demo.tokenizer), "--no-progress"]
    args += ["--output-prefix", str(tmp_path / "out"), "--workers", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SLOW_PREPROCESS), str(ready), *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "no first chunk"
    assert any(name.endswith(".bin") for name in leftovers(tmp_path))  # mid-run indeed
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == (
        "chatbaker preprocess: stopped by SIGTERM; partial files removed"
    )
    assert "Traceback" not in err
    assert leftovers(tmp_path) == []


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_next_run_removes_partial_files_of_dead_writers_only(demo, tmp_path, capsys):
    host, dead = socket.gethostname(), dead_pid()
    stale = [f"out.partial-{host}-{dead}.bin", f"out.partial-{host}-{dead}.idx"]
    kept = [
        f"out.partial-{host}-{os.getppid()}.bin",  # a writer that still runs
        f"out.partial-other-host-{dead}.bin",  # another host's (shared filesystem)
        f"other.partial-{host}-{dead}.bin",  # another output
    ]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"half")
    source = write_jsonl(tmp_path / "in.jsonl", sample_texts(10))
    assert preprocess_cli(demo, source, tmp_path / "out", "--workers", "0") == 0
    assert leftovers(tmp_path) == sorted(kept)
    err = capsys.readouterr().err
    for name in stale:
        assert f"removed {tmp_path / name}, left by a run that no longer exists" in err


def test_a_gzip_input_is_refused_saying_what_is_read(demo, tmp_path, capsys):
    """Issue 25: a valid .jsonl.gz was read as bytes and reported as "non-utf8" records."""
    import gzip
    import shutil

    source = write_jsonl(tmp_path / "in.jsonl", sample_texts(10))
    packed = tmp_path / "in.jsonl.gz"
    with open(source, "rb") as f, gzip.open(packed, "wb") as out:
        shutil.copyfileobj(f, out)
    rc = preprocess_cli(demo, str(packed), tmp_path / "out", "--workers", "0")
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert f"{packed} is gzip-compressed; chatbaker preprocess reads uncompressed .jsonl" in err
    assert "non-utf8" not in err
    assert leftovers(tmp_path) == []
