"""Generation from a training checkpoint (megatron's KV cache) and from its HF export.

References: transformers' full forward (no cache) for the logits of every
decoding step, and transformers' own `generate` for greedy decoding.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from chatbaker_megatron.cli import main as cli_main
from chatbaker_megatron.inference.backends import HFBackend
from chatbaker_megatron.inference.generator import Generator
from chatbaker_megatron.inference.sampling import SamplingConfig
from tests.support import tiny_checkpoints as tiny

PROMPT = "대한민국 헌법 제1조 The Python"
GREEDY = SamplingConfig(greedy=True, max_new_tokens=12)
SAMPLED = SamplingConfig(
    temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.3, max_new_tokens=12, seed=11
)
# Greedy ids must agree exactly; logits within fp32 summation-order noise.
LOGIT_ATOL = 2e-5


def megatron_generate_on_ranks(checkpoint: str, prompt_ids: list[int]) -> dict:
    from chatbaker_megatron.inference.backends import load_megatron_backend

    backend = load_megatron_backend(checkpoint)
    generator = Generator(backend)
    greedy = generator.generate(prompt_ids, GREEDY).token_ids
    # The logits megatron's KV-cached decoding saw at every step.
    ids = prompt_ids + greedy
    steps = [backend.forward(ids[: len(prompt_ids)], 0)]
    for position in range(len(prompt_ids), len(ids) - 1):
        steps.append(backend.forward([ids[position]], position))
    sampled = Generator(backend).generate(prompt_ids, SAMPLED).token_ids
    return {"greedy": greedy, "step_logits": torch.stack(steps), "sampled": sampled}


def test_kv_cached_decoding_matches_transformers(ranks, layout_checkpoint, exported):
    # Saved at TP=2: the padded vocabulary (512 rows) differs from TP=1's (384).
    _, checkpoint = layout_checkpoint("tp2")
    hf = HFBackend(exported("tp2"))
    prompt_ids = hf.tokenizer.encode(PROMPT)
    ours = ranks.run(1, megatron_generate_on_ranks, str(checkpoint), prompt_ids)[0]

    ids = torch.tensor([prompt_ids + ours["greedy"]])
    with torch.no_grad():
        full = hf.model(ids).logits[0, len(prompt_ids) - 1 : -1]
    diff = (ours["step_logits"] - full).abs().max().item()
    print(
        f"\nKV-cached megatron decoding vs transformers full forward: max |logits diff| = {diff:.3e}"
    )
    assert diff < LOGIT_ATOL

    reference = hf.model.generate(
        torch.tensor([prompt_ids]),
        do_sample=False,
        max_new_tokens=GREEDY.max_new_tokens,
        eos_token_id=hf.tokenizer.eos_id,
        pad_token_id=hf.tokenizer.pad_id,
    )[0, len(prompt_ids) :].tolist()
    assert ours["greedy"] == reference
    assert Generator(hf).generate(prompt_ids, GREEDY).token_ids == reference
    assert Generator(hf).generate(prompt_ids, SAMPLED).token_ids == ours["sampled"]


def test_cache_is_reused_for_a_shared_prefix(exported):
    backend = HFBackend(exported("tp1"))
    calls: list[tuple[int, int]] = []
    forward = backend.forward
    backend.forward = lambda ids, start: calls.append((start, len(ids))) or forward(ids, start)
    prompt = backend.tokenizer.encode(PROMPT)
    generator = Generator(backend)
    first = generator.generate(prompt, GREEDY)
    calls.clear()
    longer = prompt + first.token_ids[:5]
    again = generator.generate(longer, GREEDY)
    assert calls[0] == (len(prompt) + 4, 1), "only the uncached token runs"
    assert (
        again.token_ids == Generator(HFBackend(exported("tp1"))).generate(longer, GREEDY).token_ids
    )


def test_generate_cli_json_is_the_same_for_checkpoint_and_export(
    layout_checkpoint, exported, capsys
):
    _, checkpoint = layout_checkpoint("pp2")
    hf = exported("pp2")
    args = ["--prompt", PROMPT, "--greedy", "--max-new-tokens", "8", "--json"]
    assert cli_main(["generate", "--hf", str(hf), *args]) == 0
    from_hf = json.loads(capsys.readouterr().out)
    assert set(from_hf) == {"prompt", "prompt_ids", "generated_ids", "text", "stop_reason"}
    assert len(from_hf["generated_ids"]) == 8 and from_hf["stop_reason"] == "length"
    # The megatron path in its own process (it sets up torch.distributed and megatron state).
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatbaker_megatron.cli",
            "generate",
            "--checkpoint",
            str(checkpoint),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    from_checkpoint = json.loads(run.stdout.strip().splitlines()[-1])
    assert from_checkpoint == from_hf


def test_generate_refuses_blocked_input(exported, tmp_path, capsys):
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("# terms\nforbidden\n")
    code = cli_main(
        [
            "generate",
            "--hf",
            str(exported("tp1")),
            "--prompt",
            "a ＦＯＲＢＩＤＤＥＮ word",
            "--input-filter",
            f"blocklist:{blocklist}",
        ]
    )
    assert code == 3
    assert "a term on the server's blocklist" in capsys.readouterr().err


def test_prompt_longer_than_the_model_is_refused(exported):
    backend = HFBackend(exported("tp1"))
    with pytest.raises(
        ValueError, match=f"attends over {tiny.TINY.max_position_embeddings} positions"
    ):
        Generator(backend).generate([5] * tiny.TINY.max_position_embeddings, GREEDY)
