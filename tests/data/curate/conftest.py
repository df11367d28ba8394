"""The raw sample (clean corpus + planted faults, with ground truth) and one curate run of it,
made once per session and shared by the curate tests."""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chatbaker_megatron.config.curate import CurateConfig
from chatbaker_megatron.data.curate.cli import compose_curate, curate
from chatbaker_megatron.data.curate.raw_sample import make_raw_sample


@dataclass
class RawSample:
    folder: Path
    truth: dict[str, dict[str, Any]]

    def documents(self) -> dict[str, dict[str, Any]]:
        """The readable planted and clean documents by id (all formats, the bad file's good lines)."""
        import gzip

        import pyarrow.parquet as pq

        docs = {}
        for path in (self.folder / "raw_a.jsonl", self.folder / "raw_b.jsonl.gz"):
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as f:
                docs.update((d["id"], d) for d in map(json.loads, f))
        docs.update(
            (d["id"], d) for d in pq.read_table(self.folder / "raw_other.parquet").to_pylist()
        )
        return docs


@dataclass
class Curated:
    cfg: CurateConfig
    overrides: list[str]
    output: Path
    report: dict[str, Any]

    def records(self) -> dict[str, list[dict[str, Any]]]:
        """Output records by language folder."""
        found: dict[str, list[dict[str, Any]]] = {}
        for path in sorted(self.output.glob("*/*.jsonl")):
            with open(path, encoding="utf-8") as f:
                found.setdefault(path.parent.name, []).extend(map(json.loads, f))
        return found


@pytest.fixture(scope="session")
def raw_sample(tmp_path_factory: pytest.TempPathFactory) -> RawSample:
    folder = tmp_path_factory.mktemp("raw_sample")
    return RawSample(folder, make_raw_sample(str(folder)))


@pytest.fixture(scope="session")
def curated(raw_sample: RawSample, tmp_path_factory: pytest.TempPathFactory) -> Curated:
    """The whole job on the raw sample as 2 tasks (run one after the other: no pool to start)."""
    output = tmp_path_factory.mktemp("curated") / "out"
    overrides = [
        f"input={raw_sample.folder}",
        f"output={output}",
        "executor.tasks=2",
        "progress=false",
    ]
    cfg = compose_curate(overrides)
    report = curate(cfg)
    assert os.path.isfile(output / "report.png")
    return Curated(cfg, overrides, output, report)
