"""Tokenizer files and the chat template of an exported (or imported) model.

For SFT models the export sets the tokenizer's Jinja `chat_template` from
the template the SFT run trained with (data/templates.py renders both), and
also writes the template itself as data (`chatbaker_template.yaml`), which
`chatbaker chat --hf` renders with the same code as training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from chatbaker_megatron.data.templates import (
    TEMPLATE_FILE,
    ChatTemplate,
    chat_template_jinja,
    write_template,
)
from chatbaker_megatron.data.tokenizer.load import CONFIG_FILE, TOKENIZER_FILE

JINJA_FILE = "chat_template.jinja"
# Copied byte for byte when present; tokenizer_config.json is rewritten.
VERBATIM_FILES = (TOKENIZER_FILE, "special_tokens_map.json", "added_tokens.json")


def write_tokenizer(src: Path, dst: Path, template: ChatTemplate | None) -> None:
    """The tokenizer files of `src` into `dst`, with `template` as the chat template when given."""
    if not (src / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"{src / TOKENIZER_FILE}: no tokenizer file")
    dst.mkdir(parents=True, exist_ok=True)
    for name in VERBATIM_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    config_path = src / CONFIG_FILE
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    jinja = (src / JINJA_FILE).read_text(encoding="utf-8") if (src / JINJA_FILE).is_file() else None
    if template is not None:
        config["chat_template"] = chat_template_jinja(template)
        write_template(dst / TEMPLATE_FILE, template)
        if jinja is not None:
            # transformers 5 prefers this file over the config's chat_template: keep them equal.
            jinja = config["chat_template"]
    (dst / CONFIG_FILE).write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    if jinja is not None:
        (dst / JINJA_FILE).write_text(jinja, encoding="utf-8")
