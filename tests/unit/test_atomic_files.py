"""The atomic write (atomic_files.py): whole or not at all, durable, no temp file left behind."""

from __future__ import annotations

import os

import pytest

from chatbaker_megatron.atomic_files import create_once, publish, replace_file, replacing


def test_replace_file_replaces_and_leaves_only_the_target(tmp_path):
    path = tmp_path / "latest"
    path.write_text("iter_0000100\n")
    replace_file(str(path), "iter_0000200\n")
    assert path.read_text() == "iter_0000200\n"
    assert os.listdir(tmp_path) == ["latest"]


def test_a_failure_mid_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("old: 1\n")
    with pytest.raises(KeyboardInterrupt), replacing(str(path)) as f:
        f.write("new: ")
        f.flush()  # half of the new content is on disk under the temp name
        raise KeyboardInterrupt
    assert path.read_text() == "old: 1\n"
    assert os.listdir(tmp_path) == ["config.yaml"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError), replacing(str(tmp_path / "job.json")) as f:
        f.write("{")
        raise ValueError("plan not serialisable")
    assert os.listdir(tmp_path) == []


def test_publish_syncs_every_file_before_the_first_rename_and_the_directory_after(
    tmp_path, monkeypatch
):
    """The last target is a commit marker: it must never name data still in the page cache."""
    events: list[tuple[str, str]] = []
    fsync, rename = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        fsync(fd)

    def recording_replace(src: str, dst: str) -> None:
        events.append(("rename", os.path.basename(dst)))
        rename(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    for name in ("out.partial.bin", "out.partial.idx"):
        (tmp_path / name).write_bytes(b"data")
    publish(
        (str(tmp_path / "out.partial.bin"), str(tmp_path / "out.bin")),
        (str(tmp_path / "out.partial.idx"), str(tmp_path / "out.idx")),
    )
    assert events == [
        ("fsync", "out.partial.bin"),
        ("fsync", "out.partial.idx"),
        ("rename", "out.bin"),
        ("rename", "out.idx"),
        ("fsync", tmp_path.name),
    ]
    assert sorted(os.listdir(tmp_path)) == ["out.bin", "out.idx"]


def test_create_once_shows_the_file_whole_or_not_at_all(tmp_path, monkeypatch):
    """The job's fatal error line: a losing rank ends the job as soon as it sees the
    file, and the launcher reads it at once, so it must never exist half written."""
    target = tmp_path / "fatal_error.txt"
    fsync = os.fsync

    def fsync_while_absent(fd):
        assert not target.exists()  # the content is still on its way to disk
        fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_while_absent)
    assert create_once(str(target), "first\n")
    monkeypatch.setattr(os, "fsync", fsync)
    assert not create_once(str(target), "second\n")
    assert target.read_text() == "first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["fatal_error.txt"]  # no temp left
