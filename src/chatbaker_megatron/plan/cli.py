"""`chatbaker plan <hydra overrides> [--top K] [--json]`: rank the layouts of a run before launching it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from chatbaker_megatron.plan.assumptions import Assumptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. experiment=plm_7b_a100x256"
    )
    parser.add_argument("--top", type=int, default=10, help="layouts to show (0 = all); default 10")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the ranked layouts with every predicted component as JSON",
    )
    default = Assumptions()
    parser.add_argument(
        "--compute-efficiency",
        type=float,
        default=default.compute_efficiency,
        help=f"assumed fraction of peak the math runs at (default {default.compute_efficiency})",
    )
    parser.add_argument(
        "--comm-efficiency",
        type=float,
        default=default.comm_efficiency,
        help=f"assumed fraction of link bandwidth collectives reach (default {default.comm_efficiency})",
    )


def run(args: argparse.Namespace) -> int:
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from chatbaker_megatron.config.compose import compose_dict
    from chatbaker_megatron.config.schema import ConfigError, RunConfig
    from chatbaker_megatron.plan import report
    from chatbaker_megatron.plan.candidates import plan, workload_of

    assume = dataclasses.replace(
        Assumptions(),
        compute_efficiency=args.compute_efficiency,
        comm_efficiency=args.comm_efficiency,
    )
    try:
        # Not validated as a whole: the configured layout need not suit this
        # cluster (e.g. a preset's parallel.dp after cluster.nodes=16); every
        # layout the planner proposes is validated with the rest of the config.
        cfg = OmegaConf.to_object(compose_dict(args.overrides))
        assert isinstance(cfg, RunConfig)  # the composed node's schema (config.schema.register)
        work = workload_of(cfg)
        candidates = plan(cfg, assume)
    except (ConfigError, HydraException, OmegaConfBaseException) as err:
        print(f"chatbaker plan: {err}", file=sys.stderr)
        return 2
    if args.json:
        data = report.plan_dict(cfg, work, assume, candidates, args.overrides, args.top)
        json.dump(data, sys.stdout, indent=1)
        print()
    else:
        report.render(cfg, work, assume, candidates, args.overrides, args.top)
    return 0 if any(c.fits for c in candidates) else 1
