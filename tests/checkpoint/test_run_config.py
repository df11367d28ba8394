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


def test_relative_tokenizer_is_found_from_any_directory(tmp_path, monkeypatch):
    """An older run stored data.root relative to where training ran: serve and export-hf
    started elsewhere take it from there (the checkpoint's path less the run_dir)."""
    work = tmp_path / "work"
    (work / "runs" / "demo_data" / "tokenizer").mkdir(parents=True)
    checkpoint = work / "runs" / "demo" / "checkpoints" / "iter_0000010"
    checkpoint.mkdir(parents=True)
    config = {"run_dir": "runs/demo", "data": {"root": "runs/demo_data", "tokenizer": "tokenizer"}}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    found = run_tokenizer_dir(config, str(checkpoint))
    assert found == work / "runs" / "demo_data" / "tokenizer"
    with pytest.raises(FileNotFoundError) as caught:
        run_tokenizer_dir({**config, "run_dir": "runs/other"}, str(checkpoint))
    message = str(caught.value)
    assert "\n" not in message and "runs/demo_data/tokenizer" in message
    assert str(elsewhere) in message and "pass --tokenizer DIR" in message


def test_chat_template_only_for_chat_runs(tmp_path):
    assert run_chat_template(tiny.run_config(tmp_path, tmp_path, "sft")) == "chatbaker"
    assert run_chat_template(tiny.run_config(tmp_path, tmp_path, "pretrain")) is None
    # A DPO run trained with its own data.preference.template: chat and serve use it.
    preference = tiny.run_config(tmp_path, tmp_path, "preference")
    preference["data"]["preference"] = {"template": "vicuna_v1.1"}
    assert run_chat_template(preference) == "vicuna_v1.1"


def test_unknown_model_keys_are_refused():
    with pytest.raises(ValueError, match="ckpt: the model config does not fit ModelConfig"):
        model_config_from_dict({"num_layerz": 2}, "ckpt")
