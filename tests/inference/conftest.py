"""The tiny model, tokenizer and exported folders shared with the convert tests."""

from tests.convert.conftest import exported, layout_checkpoint, tokenizer_dir  # noqa: F401
