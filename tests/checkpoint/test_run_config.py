"""The run config a checkpoint stores, read back by the tools (no model needed)."""

from __future__ import annotations

import pytest

from chatbaker_megatron.checkpoint.run_config import (
    model_config_from_dict,
    run_chat_template,
    run_tokenizer_dir,
)
from tests.support import tiny_checkpoints as tiny


def test_missing_tokenizer_is_named(tmp_path):
    config = tiny.run_config(tmp_path / "nowhere", tmp_path)
    with pytest.raises(FileNotFoundError, match="pass --tokenizer DIR"):
        run_tokenizer_dir(config, "ckpt")


def test_chat_template_only_for_sft_runs(tmp_path):
    assert run_chat_template(tiny.run_config(tmp_path, tmp_path, "sft")) == "chatbaker"
    assert run_chat_template(tiny.run_config(tmp_path, tmp_path, "pretrain")) is None


def test_unknown_model_keys_are_refused():
    with pytest.raises(ValueError, match="ckpt: the model config does not fit ModelConfig"):
        model_config_from_dict({"num_layerz": 2}, "ckpt")
