"""Shared by the end-to-end tests: the demo data, prepared once per session.

The runs here pass `data.cache_mode=shared`: one node has one filesystem, so
megatron's own builder (rank 0 builds the index cache, the other ranks read
it) does the job without the per-node build in a child interpreter, which
costs seconds of imports in every multi-rank run. The node-local build has its
own tests in tests/data/datasets/test_pretrain.py.
"""

import pytest

from chatbaker_megatron.data.demo.prepare import prepare_demo_data


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("demo_data"))
    prepare_demo_data(root)
    return root
