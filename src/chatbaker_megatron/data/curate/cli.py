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

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from chatbaker_megatron.config.checks import ConfigError, check_known_keys
from chatbaker_megatron.config.curate import CurateConfig, register, validate_curate_config
from chatbaker_megatron.data.corpus import BadInputError

CONFIG_MODULE = "chatbaker_megatron.conf"


def compose_curate(overrides: list[str]) -> CurateConfig:
    """The validated CurateConfig for these Hydra overrides."""
    register()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        node = compose(config_name="curate", overrides=list(overrides))
    check_known_keys(node, CurateConfig)
    for key in ("input", "output"):
        if OmegaConf.is_missing(node, key):
            raise ConfigError(f"{key}: required (chatbaker curate input=PATH_OR_GLOB output=DIR)")
    cfg = OmegaConf.to_object(node)
    validate_curate_config(cfg)
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
    run_stages(cfg, stages)
    report_path = os.path.join(cfg.output, "report.json")
    if cfg.executor.kind != "local":
        print(f"submitted {len(stages)} chained SLURM arrays; the report will be in {report_path}")
        return {}
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
