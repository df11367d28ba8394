"""Suite-wide setup: Triton's interpreter and NCCL's device rules on CPU, the shared worker pools.

The tiny model's artefacts are session fixtures too (tests/support/fixtures.py).
"""

import os

import pytest
import torch

from chatbaker_megatron import notices
from tests.parallel.harness import Pools
from tests.support import device_rules

if not torch.cuda.is_available():
    # Must be set before triton is first imported (it is read at import).
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # NCCL's device rules on CPU for the whole suite (tests/support/device_rules.py).
    os.environ.setdefault(device_rules.ENV, "nccl")
# Every interpreter the suite starts runs tests/support/site/sitecustomize.py,
# which installs the rules there as well.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [os.path.join(os.path.dirname(os.path.abspath(__file__)), "support", "site")]
    + [path for path in [os.environ.get("PYTHONPATH")] if path]
)
device_rules.install()

# The tiny model's tokenizer, checkpoints and HF folders (convert, inference, eval tests).
pytest_plugins = ["tests.support.fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    # The third-party warnings `chatbaker` hides (chatbaker_megatron/notices.py)
    # stay out of pytest's warnings summary too.
    for notice in notices.WARNED:
        config.addinivalue_line(
            "filterwarnings",
            f"ignore:{notice.message}:{notice.category.__name__}:{notice.module}",
        )


@pytest.fixture(scope="session")
def ranks():
    """`ranks.run(world_size, fn, *args)` runs fn on that many ranks; returns per-rank results."""
    pools = Pools()
    yield pools
    pools.close()
