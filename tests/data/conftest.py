"""Shared fixtures of the data tests: the demo corpus built once per session, and its tokenizer."""

import pytest

from chatbaker_megatron.data.demo.prepare import DemoData, prepare_demo_data
from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer, load_tokenizer


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    return prepare_demo_data(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def tokenizer(demo: DemoData) -> ChatBakerTokenizer:
    return load_tokenizer(demo.tokenizer)
