"""A real third-party client: lm-eval's `local-completions` model pointed at `chatbaker serve`
scores KoBEST-local and English-local as `chatbaker eval` does on the same HF folder.

Its log-likelihood requests are token ids with `echo: true, logprobs: 1, max_tokens: 1`
(the prompt's log-probabilities); `chatbaker eval` runs lm-eval's own HFLM in process."""

from __future__ import annotations

import pytest

from chatbaker_megatron.eval.runner import evaluate, run_lm_eval
from chatbaker_megatron.eval.suites import resolve_tasks

LIMIT = 2
SEED = 1234


def test_lm_eval_local_completions_scores_equal_chatbaker_eval(served, monkeypatch):
    pytest.importorskip("accelerate", reason="lm-eval's HFLM needs accelerate (the eval extra)")
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    tasks = resolve_tasks("kobest_local,english_local")
    ours, _ = run_lm_eval(served.hf_dir, tasks, limit=LIMIT, batch_size=8, device="cpu", seed=SEED)
    monkeypatch.setenv("OPENAI_API_KEY", served.api_key)  # what local-completions sends
    client = LocalCompletionsAPI(
        base_url=f"{served.base_url}/v1/completions",
        model=served.model_id,
        tokenizer=str(served.hf_dir),
        tokenizer_backend="huggingface",
        tokenized_requests=True,
        max_length=512,
        num_concurrent=4,
        max_retries=1,
    )
    theirs, _ = evaluate(client, tasks, limit=LIMIT, seed=SEED)
    assert [r.task for r in theirs] == [r.task for r in ours] and len(ours) == 16
    for mine, its in zip(ours, theirs):
        assert its.samples == mine.samples == LIMIT
        assert its.metrics == pytest.approx(mine.metrics, abs=1e-6), mine.task
