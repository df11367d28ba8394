"""The server under test: `chatbaker serve` on the tiny SFT model's HF folder, in this process.

`served` (session) is the demo set-up: an API key, the blocklist filter, the
moderation hook against a local fake of OpenAI's /v1/moderations, and the
request log, with the engine in its own process as `chatbaker serve` runs it;
`served_in_thread` is the same with `--engine thread`, for tests that reach
into the engine. Each server runs uvicorn in a thread on a free loopback port.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from chatbaker_megatron.serve import cli
from tests.support.serving import running

API_KEY = "test-key-123"
MODEL_ID = "chatbaker-tiny"
BLOCKED_WORD = "금지어"  # in the blocklist file
FLAGGED_WORD = "폭탄"  # flagged by the fake moderation service


class ModerationRequest(BaseModel):
    input: str | list[str]
    model: str | None = None


def fake_moderation_app(flagged_word: str, seen: list[str]) -> FastAPI:
    """OpenAI's /v1/moderations schema; flags inputs containing `flagged_word` as violence."""
    app = FastAPI()

    @app.post("/v1/moderations")
    async def moderations(body: ModerationRequest) -> dict:
        inputs = [body.input] if isinstance(body.input, str) else body.input
        seen.extend(inputs)
        results = []
        for text in inputs:
            hit = flagged_word in text
            categories = {"violence": hit, "harassment": False, "hate": False}
            results.append(
                {
                    "flagged": hit,
                    "categories": categories,
                    "category_scores": {k: 0.99 if v else 0.01 for k, v in categories.items()},
                }
            )
        return {"id": "modr-test", "model": body.model or "fake-moderation", "results": results}

    return app


def serve_args(hf_dir: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(["--hf", str(hf_dir), "--model-name", MODEL_ID, *extra])


@dataclass
class Served:
    base_url: str
    api_key: str
    model_id: str
    blocked_word: str
    flagged_word: str
    hf_dir: Path
    app: FastAPI
    request_log: Path
    moderated: list[str]  # every text the fake moderation service was asked about


@pytest.fixture(scope="session")
def served_hf(exported) -> Path:
    return exported("tp1_sft")


def _serve(served_hf: Path, root: Path, *extra: str) -> Iterator[Served]:
    blocklist = root / "blocklist.txt"
    blocklist.write_text(f"# terms the demo refuses\n{BLOCKED_WORD}\n", encoding="utf-8")
    moderated: list[str] = []
    with running(fake_moderation_app(FLAGGED_WORD, moderated)) as moderation_url:
        args = serve_args(
            served_hf,
            "--api-key", API_KEY,
            "--input-filter", f"blocklist:{blocklist}",
            "--moderation-url", f"{moderation_url}/v1",
            "--request-log", str(root / "requests.jsonl"),
            "--max-batch", "4",
            *extra,
        )  # fmt: skip
        app = cli.build_app(args)
        with running(app) as base_url:
            yield Served(
                base_url=base_url,
                api_key=API_KEY,
                model_id=MODEL_ID,
                blocked_word=BLOCKED_WORD,
                flagged_word=FLAGGED_WORD,
                hf_dir=served_hf,
                app=app,
                request_log=root / "requests.jsonl",
                moderated=moderated,
            )


@pytest.fixture(scope="session")
def served(served_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The server as it is run: its engine in a process of its own."""
    yield from _serve(served_hf, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="session")
def served_in_thread(served_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The same server with `--engine thread`: for tests that reach into the engine
    (count its forward passes, inject a fault into its sampling)."""
    yield from _serve(served_hf, tmp_path_factory.mktemp("serve-thread"), "--engine", "thread")
