"""Suite-wide setup: Triton's interpreter on CPU, and the shared multi-rank worker pools."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before triton is first imported (it is read at import).
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # NCCL's device rules on CPU for the whole suite, in every process it starts
    # (worker pools, torchrun ranks): see chatbaker_megatron/platform/device_rules.py.
    os.environ.setdefault("CHATBAKER_DEVICE_RULES", "nccl")

from tests.parallel.harness import Pools


@pytest.fixture(scope="session")
def ranks():
    """`ranks.run(world_size, fn, *args)` runs fn on that many ranks; returns per-rank results."""
    pools = Pools()
    yield pools
    pools.close()
