"""One output folder, one run: a folder holding another run's output is refused, never mixed.

The first run writes `curate_run.json` (the input files with sizes and
modification times, and every config key that changes the output) before
any stage starts. A rerun with the same fingerprint resumes (datatrove skips
the tasks that left a completion marker); anything else in the folder, or
a different fingerprint, is a clear error naming what differs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

from chatbaker_megatron.atomic_files import replacing
from chatbaker_megatron.config.checks import ConfigError
from chatbaker_megatron.config.curate import CurateConfig
from chatbaker_megatron.data.curate.inputs import InputFiles

MANIFEST = "curate_run.json"


def fingerprint(cfg: CurateConfig, inputs: InputFiles) -> dict[str, Any]:
    """What decides the output: the inputs as they are now and the config that changes the output.

    Left out: where it runs (executor kind, workers, SLURM fields; tasks stay:
    they decide the shards), progress bars, and the output path itself.
    """
    config = asdict(cfg)
    config.pop("output")
    config.pop("input")
    config.pop("progress")
    config["executor"] = {"tasks": cfg.executor.tasks}
    files = []
    for path in inputs.all:
        stat = os.stat(os.path.join(inputs.root, path))
        files.append([path, stat.st_size, stat.st_mtime_ns])
    return {"input_root": inputs.root, "input_files": files, "config": config}


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    found = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}")
    return found


def claim_output_folder(output: str, expected: dict[str, Any]) -> bool:
    """Make `output` this run's folder; True when resuming an earlier run of the same job."""
    manifest = os.path.join(output, MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as f:
            found = json.load(f)
        if found != expected:
            differing = ", ".join(_differences(found, expected)[:8])
            raise ConfigError(
                f"output={output}: holds the output of another curate run (different {differing}); "
                f"mixing them would corrupt both: use a new output folder, or delete this one"
            )
        return True
    if os.path.isdir(output) and os.listdir(output):
        raise ConfigError(
            f"output={output}: the folder is not empty and holds no {MANIFEST}, so it is not a "
            f"chatbaker curate output: use a new or empty output folder"
        )
    os.makedirs(output, exist_ok=True)
    with replacing(manifest) as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
    return False
