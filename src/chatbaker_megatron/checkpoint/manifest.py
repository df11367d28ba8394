"""What a checkpoint holds, recorded when it is written and verified before it is loaded.

`manifest.json` in every iteration directory lists each file with its size,
its CRC-32 and the rank that wrote it, plus whether the state it saves is
finite (the step before the save had a finite loss and gradient norm):

    {"format": 1, "iteration": 300, "finite": true,
     "files": {"__0_0.distcp": {"size": 1155165, "crc32": 2882400018, "rank": 0}, ...}}

megatron's torch_dist format names each rank's shard `__<rank>_<n>.distcp`;
rank 0 (the coordinator) also writes `.metadata` and `metadata.json`. Every
rank checksums the files it wrote (in parallel, right after writing, while
they are in the page cache) and rank 0 writes the manifest before the
directory is renamed and `latest` moves. Loading verifies a share of the
files on every rank, so neither side reads the whole checkpoint in one
process (megatron's own `verify_integrity` has rank 0 SHA-256 every file).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch.distributed as dist

from chatbaker_megatron.atomic_files import replacing

MANIFEST = "manifest.json"
FORMAT = 1
_SHARD = re.compile(r"^__(\d+)_\d+\.distcp$")
_CHUNK = 16 << 20


@dataclass(frozen=True)
class FileRecord:
    size: int
    crc32: int
    rank: int


@dataclass
class Manifest:
    iteration: int
    finite: bool
    files: dict[str, FileRecord] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(record.size for record in self.files.values())


# Files of ours that a writer leaves in a `.tmp` directory and that are gone before it is published.
BOOKKEEPING_PREFIX = ".chatbaker-"


def writer_rank(name: str) -> int:
    """The rank that writes a checkpoint file: the one in a shard's name, else the coordinator."""
    match = _SHARD.match(name)
    return int(match.group(1)) if match else 0


def crc32(path: str) -> int:
    value = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            value = zlib.crc32(chunk, value)
    return value


def record_files(
    directory: str, rank: int, known: dict[str, FileRecord] | None = None
) -> dict[str, FileRecord]:
    """Size and CRC-32 of the files `rank` wrote into `directory`, each fsynced.

    megatron fsyncs the shards but not `metadata.json`; an fsync of a file
    already on disk costs nothing. Files in `known` (recorded earlier, by a
    background writer) are taken as they are; bookkeeping files are skipped.
    """
    records = dict(known or {})
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if (
            name == MANIFEST
            or name in records
            or name.startswith(BOOKKEEPING_PREFIX)
            or not os.path.isfile(path)
            or writer_rank(name) != rank
        ):
            continue
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        records[name] = FileRecord(os.path.getsize(path), crc32(path), rank)
    return records


def write_records(path: str, records: dict[str, FileRecord]) -> None:
    """A background writer's records, for its training process to pick up."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({name: asdict(record) for name, record in records.items()}, f)


def take_records(path: str) -> dict[str, FileRecord]:
    """What write_records left at `path` (removing the file), or nothing."""
    try:
        with open(path, encoding="utf-8") as f:
            records = {name: FileRecord(**fields) for name, fields in json.load(f).items()}
    except FileNotFoundError:
        return {}
    os.remove(path)
    return records


def write_manifest(directory: str, manifest: Manifest) -> None:
    """Write the manifest atomically; the directory is fsynced, so its entries are durable too."""
    payload = {
        "format": FORMAT,
        "iteration": manifest.iteration,
        "finite": manifest.finite,
        "files": {name: asdict(record) for name, record in sorted(manifest.files.items())},
    }
    with replacing(os.path.join(directory, MANIFEST)) as f:
        json.dump(payload, f, indent=1)


class ManifestError(ValueError):
    pass


def read_manifest(directory: str) -> Manifest | None:
    """The manifest, or None for a checkpoint written before manifests existed."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            payload: dict[str, Any] = json.load(f)
        return Manifest(
            iteration=int(payload["iteration"]),
            finite=bool(payload["finite"]),
            files={name: FileRecord(**record) for name, record in payload["files"].items()},
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ManifestError(f"{MANIFEST} is unreadable ({type(err).__name__}: {err})") from None


def check_files(
    directory: str, manifest: Manifest, names: list[str], checksums: bool = True
) -> list[str]:
    """What is wrong with the named files: missing, a size other than recorded, a bad CRC-32."""
    problems = []
    for name in names:
        record = manifest.files[name]
        path = os.path.join(directory, name)
        where = f"{name} (written by rank {record.rank})"
        if not os.path.isfile(path):
            problems.append(f"{where} is missing")
            continue
        size = os.path.getsize(path)
        if size != record.size:
            kind = "truncated" if size < record.size else "longer than written"
            problems.append(f"{where} is {kind}: {size:,} bytes, {record.size:,} recorded")
        elif checksums and crc32(path) != record.crc32:
            problems.append(f"{where} is corrupted: its CRC-32 differs from the one recorded")
    return problems


def unverifiable(directory: str, allow_unverified: bool) -> list[str]:
    """The problem of a checkpoint without a manifest: none only with `allow_unverified`."""
    if not os.path.isdir(directory):
        return [f"{directory} does not exist"]
    if allow_unverified:
        return []
    return [
        f"{MANIFEST} is missing, so its files cannot be verified (a checkpoint written before "
        "manifests, or copied without it); load it unchecked only if you trust it, with "
        "checkpoint.allow_unverified=true"
    ]


def verify_local(directory: str, allow_unverified: bool = False) -> list[str]:
    """Check every file of a checkpoint in this process (tools reading a checkpoint alone)."""
    try:
        manifest = read_manifest(directory)
    except ManifestError as err:
        return [str(err)]
    if manifest is None:
        return unverifiable(directory, allow_unverified)
    return check_files(directory, manifest, sorted(manifest.files))


def verify(directory: str, allow_unverified: bool = False) -> list[str]:
    """Collective: every rank checks a share of the files; all get every problem found.

    A checkpoint without a manifest is refused unless `allow_unverified`.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        manifest = read_manifest(directory)
        if manifest is None:
            mine = unverifiable(directory, allow_unverified) if rank == 0 else []
        else:
            mine = check_files(directory, manifest, sorted(manifest.files)[rank::world])
    except ManifestError as err:
        mine = [str(err)] if rank == 0 else []
    gathered: list[list[str] | None] = [None] * world
    dist.all_gather_object(gathered, mine)
    return [problem for problems in gathered for problem in problems or []]


def describe(directory: str, problems: list[str]) -> str:
    """One line: the checkpoint and its first problem (and how many more)."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"checkpoint {directory} failed verification: {problems[0]}{more}"
