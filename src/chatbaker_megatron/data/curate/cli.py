"""`chatbaker curate input=PATH_OR_GLOB output=DIR [overrides]`.

The config is conf/curate.yaml plus the `curate` group (`curate=local`, the
default, or `curate=slurm`) and Hydra overrides, composed like `chatbaker
train`'s and checked against config/curate.py's schema (unknown keys and
out-of-range values refused) before anything is written. A second run with
the same input and config resumes; any other run into the same output folder
is refused (output_folder.py).
"""

from __future__ import annotations

import os
import sys
import time

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from chatbaker_megatron.config.checks import ConfigError
from chatbaker_megatron.config.compose import compose_config
from chatbaker_megatron.config.curate import CurateConfig, register
from chatbaker_megatron.data.corpus import BadInputError


def compose_curate(overrides: list[str]) -> CurateConfig:
    """The validated CurateConfig for these Hydra overrides."""
    register()
    node = compose_config("curate", overrides, CurateConfig)
    for key in ("input", "output"):
        if OmegaConf.is_missing(node, key):
            raise ConfigError(f"{key}: required (chatbaker curate input=PATH_OR_GLOB output=DIR)")
    cfg = OmegaConf.to_object(node)
    assert isinstance(cfg, CurateConfig)  # the composed node's schema (`register` above)
    cfg.validate()
    return cfg


def curate(cfg: CurateConfig) -> dict:
    """Run (or resume) the job; returns the report (SLURM: after submitting, an empty dict)."""
    from chatbaker_megatron.data.curate.inputs import resolve_inputs
    from chatbaker_megatron.data.curate.output_folder import claim_output_folder, fingerprint
    from chatbaker_megatron.data.curate.pipeline import build_stages, run_stages

    inputs = resolve_inputs(cfg.input)
    resumed = claim_output_folder(cfg.output, fingerprint(cfg, inputs))
    print(
        f"curate: {len(inputs.all)} input files under {inputs.root} -> {cfg.output}"
        + (" (resuming: finished tasks are skipped)" if resumed else "")
    )
    stages = build_stages(cfg, inputs)
    started = time.monotonic()
    run_stages(cfg, stages)
    report_path = os.path.join(cfg.output, "report.json")
    if cfg.executor.kind != "local":
        print(f"submitted {len(stages)} chained SLURM arrays; the report will be in {report_path}")
        return {}
    # The job's wall time: datatrove's "Total Runtime" (--verbose) sums its steps' timers only.
    print(f"curate: {len(stages)} stages in {time.monotonic() - started:.1f} s (wall)")
    import json

    with open(report_path, encoding="utf-8") as f:
        return json.load(f)


def main_argv(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        cfg = compose_curate(argv)
    except (ConfigError, OmegaConfBaseException) as err:
        print(f"chatbaker curate: invalid config: {err}", file=sys.stderr)
        return 2
    try:
        report = curate(cfg)
    except (ConfigError, FileNotFoundError, BadInputError) as err:
        print(f"chatbaker curate: {err}", file=sys.stderr)
        return 1
    if report:
        with open(os.path.join(cfg.output, "report.md"), encoding="utf-8") as f:
            print(f.read())
        print(f"report: {os.path.join(cfg.output, 'report.md')} (+ report.json, report.png)")
    return 0
