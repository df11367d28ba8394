"""`chatbaker prepare-data <hydra overrides>`: build the data a run config asks for, without training.

`chatbaker train` does this itself before it starts torchrun. Run it when
the ranks are started some other way (the multi-node launcher runs it on
every node): once per node, or once in all when `data.root` is on a
filesystem every node shares.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides, as for `chatbaker train` (e.g. data=sft_demo data.root=DIR)",
    )


def run(args: argparse.Namespace) -> int:
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from chatbaker_megatron.config.compose import compose_dict
    from chatbaker_megatron.config.data import DataConfig
    from chatbaker_megatron.data.demo.prepare import prepare_data

    try:
        # Only the data group: the rest (e.g. the world size a layout needs)
        # is checked by the run itself, and cannot change what is built here.
        data = OmegaConf.to_object(compose_dict(args.overrides).data)
        assert isinstance(data, DataConfig)  # the data group's schema
        data.validate()
    except (ValueError, HydraException, OmegaConfBaseException) as err:
        print(f"chatbaker prepare-data: invalid config: {err}", file=sys.stderr)
        return 2
    prepared = prepare_data(data)
    if prepared is None:
        print("nothing to prepare: data.prepare_demo is false")
    else:
        print(f"demo data ready in {prepared.root}")
    return 0
