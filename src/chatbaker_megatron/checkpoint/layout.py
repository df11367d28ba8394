"""Where checkpoints live in a checkpoints directory, and which one is current.

    iter_0000200/        a complete checkpoint (dist_checkpointing format)
    iter_0000300.tmp/    a checkpoint being written (never loaded)
    iter_0000100.corrupt/  a checkpoint that failed verification, set aside (never loaded)
    latest               text file naming the newest complete checkpoint

`latest` is replaced atomically and fsynced before the rename, so a kill at
any moment leaves it naming a complete checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from chatbaker_megatron.atomic_files import replace_file
from chatbaker_megatron.checkpoint.manifest import ManifestError, check_files, read_manifest

LATEST = "latest"
_ITER_DIR = re.compile(r"^iter_(\d{7})$")


class CheckpointError(RuntimeError):
    pass


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def latest_checkpoint(root: str) -> str | None:
    """The directory `latest` names, or None when there is no complete checkpoint."""
    marker = os.path.join(root, LATEST)
    if not os.path.exists(marker):
        return None
    with open(marker, "rb") as f:
        raw = f.read(4096)
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CheckpointError(
            f"{marker} is damaged: {raw[:40]!r} is not the name of a checkpoint directory "
            "(expected e.g. iter_0000200)"
        ) from None
    path = os.path.join(root, name)
    if not _ITER_DIR.match(name) or not os.path.isdir(path):
        raise CheckpointError(
            f"{marker} names {name!r}, which is not a complete checkpoint directory in {root}"
        )
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a checkpoints root whose `latest` names one."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    if (path / "metadata.json").is_file():
        return path
    latest = latest_checkpoint(str(path))
    if latest is None:
        raise FileNotFoundError(
            f"{path}: neither a checkpoint (no metadata.json) nor a checkpoints directory "
            "with a `latest` marker"
        )
    return Path(latest)


def write_latest(root: str, name: str) -> None:
    """Point `latest` at `name`, replacing the old marker atomically and durably."""
    replace_file(os.path.join(root, LATEST), name + "\n")


def remove_partial(root: str) -> None:
    """Delete `.tmp` directories left by writes that were killed."""
    for name in os.listdir(root):
        if name.endswith(".tmp") and os.path.isdir(os.path.join(root, name)):
            shutil.rmtree(os.path.join(root, name))


def iterations(root: str) -> list[int]:
    """The iterations of the complete checkpoints in `root`, oldest first."""
    return sorted(int(m.group(1)) for m in (_ITER_DIR.match(n) for n in os.listdir(root)) if m)


def is_good(path: str) -> bool:
    """A manifest that says finite, and every file it lists present with its size.

    Sizes only: a CRC of every file at every save would read each checkpoint again.
    """
    try:
        manifest = read_manifest(path)
    except ManifestError:
        return False
    return (
        manifest is not None
        and manifest.finite
        and not check_files(path, manifest, list(manifest.files), checksums=False)
    )


def last_good(root: str) -> int | None:
    """The newest good checkpoint (`is_good`)."""
    return next((i for i in reversed(iterations(root)) if is_good(iteration_dir(root, i))), None)


def prune(root: str, keep_last: int) -> None:
    """Keep the newest `keep_last` complete checkpoints, and every good one (`is_good`)
    that has fewer than `keep_last` good ones after it.

    With train.nan_policy=halt or a run that skips non-finite steps, the
    newest checkpoints may hold a state that is not finite (or cannot be
    verified): they never push a good one out. A good checkpoint goes only
    once `keep_last` newer good ones exist.
    """
    done = iterations(root)
    good = [is_good(iteration_dir(root, i)) for i in done]
    for index, iteration in enumerate(done[:-keep_last]):
        if not good[index] or sum(good[index + 1 :]) >= keep_last:
            shutil.rmtree(iteration_dir(root, iteration))


def set_aside(path: str) -> str:
    """Rename a checkpoint that failed verification to `<name>.corrupt` (kept for inspection)."""
    target = path + ".corrupt"
    if os.path.exists(target):
        shutil.rmtree(target)
    os.replace(path, target)
    return target
