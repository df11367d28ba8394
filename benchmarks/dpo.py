"""A DPO step against an SFT step of the same tokens, and the reference-model choice, on CPU.

    python -m benchmarks.dpo [--steps 5]     (from the repo root)

One rank, fp32, one thread; the throughput benchmark's model (the tests'
tiny LLaMA 4x wider, vocab 8192). The global batch is 8 random pairs, each a
512-token sequence [prompt + chosen | prompt + rejected] (prompt 96, replies
160 tokens), as data/datasets/preference.py builds them. Measured, each in
a fresh process (peak RSS is per process):

- sft: train_step with the language-model loss on exactly those sequences
  (loss on both replies);
- dpo: the reference pre-pass of the 8 pairs, then train_step with the DPO
  objective on the same sequences;
- frozen copy: what the alternative to the pre-pass would add per step, a
  forward-only pass of a second model (eval_step) over the same batch.

Step times are the fastest timed step after one warm-up step (other load
on the machine only slows steps down). Prints the DPO/SFT ratio, the
pre-pass time per pair, and the frozen copy's time and weight bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time
from functools import partial

from chatbaker_megatron.config.optim import OptimConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from tests.parallel.harness import Pools
from tests.support.tiny_model import TINY_MODEL

MODEL = dataclasses.replace(
    TINY_MODEL, hidden_size=256, ffn_hidden_size=704, max_position_embeddings=512
)
VOCAB, ROW, PAIRS, PROMPT, REPLY = 8192, 512, 8, 96, 160
MICRO = 2
OPTIM = OptimConfig(lr=1e-5, min_lr=1e-5, clip_grad=1.0, warmup_iters=0)


def _store() -> list:
    import numpy as np

    rng = np.random.default_rng(0)
    store = []
    for _ in range(PAIRS):
        prompt = rng.integers(3, VOCAB, PROMPT)
        for _side in range(2):
            ids = np.concatenate([prompt, rng.integers(3, VOCAB, REPLY)])
            flags = np.zeros(len(ids), dtype=np.uint8)
            flags[PROMPT:] = 1
            store += [ids, flags]
    return store


def _timed(step, steps: int) -> float:
    step()  # warm-up
    best = float("inf")
    for _ in range(steps):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best


def measure(kind: str, steps: int) -> dict:
    """On this rank: the fastest step of `kind` (sft, dpo, frozen) and the process's peak RSS."""
    from types import SimpleNamespace

    import numpy as np

    from chatbaker_megatron import parallel
    from chatbaker_megatron.data.datasets.preference import PreferenceDataset
    from chatbaker_megatron.model.sharding import full_state
    from chatbaker_megatron.training.batches import global_batch
    from chatbaker_megatron.training.engine import build_engine
    from chatbaker_megatron.training.preference import PreferenceTraining, reference_prepass
    from chatbaker_megatron.training.step import eval_step, train_step

    ctx = parallel.initialize(ParallelConfig(micro_batch_size=MICRO), seed=1)
    engine = build_engine(
        MODEL,
        ParallelConfig(micro_batch_size=MICRO),
        OPTIM,
        vocab_size=VOCAB,
        max_sequence_length=ROW,
        train_iters=1000,
        global_batch_size=PAIRS,
    )
    dataset = PreferenceDataset(
        _store(), np.arange(PAIRS), seq_length=ROW, pad_id=0, seed=1, epochs=1
    )
    shape = {
        "global_batch_size": PAIRS,
        "micro_batch_size": MICRO,
        "dp": 1,
        "dp_rank": 0,
        "plat": ctx.platform,
    }
    batches = global_batch(dataset, start=0, **shape)
    result: dict = {"kind": kind}
    if kind == "sft":
        step = partial(train_step, engine, batches, global_batch_size=PAIRS)
    else:
        started = time.perf_counter()
        table = reference_prepass(engine, [dataset], **shape)
        result["prepass_s_per_pair"] = (time.perf_counter() - started) / PAIRS
        settings = SimpleNamespace(loss="dpo", beta=0.1, label_smoothing=0.0, rpo_alpha=1.0)
        training = PreferenceTraining(settings, table, PAIRS)
        training.attach(batches)
        if kind == "dpo":
            step = partial(
                train_step, engine, batches, global_batch_size=PAIRS, objective=training.objective
            )
        else:
            step = partial(eval_step, engine, batches, training.objective)
            weights = full_state(engine.chunks)
            result["weight_bytes"] = sum(t.numel() * t.element_size() for t in weights.values())
    result["step_s"] = _timed(step, steps)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up")
    args = parser.parse_args()
    results = {}
    for kind in ("sft", "dpo", "frozen"):
        pools = Pools()  # a fresh process each: peak RSS is per process
        try:
            results[kind] = pools.run(1, measure, kind, args.steps)[0]
        finally:
            pools.close()
    sft, dpo, frozen = results["sft"], results["dpo"], results["frozen"]
    tokens = PAIRS * ROW
    print(f"model {MODEL.num_layers}x{MODEL.hidden_size}, vocab {VOCAB}; {PAIRS} pairs x {ROW}")
    print(f"{'step':<28}{'s/step':>10}{'tokens/s':>12}{'peak RSS MiB':>14}")
    for name, r in (("sft (same tokens)", sft), ("dpo (pre-pass reference)", dpo)):
        print(
            f"{name:<28}{r['step_s']:>10.3f}{tokens / r['step_s']:>12,.0f}{r['peak_rss_mib']:>14,.0f}"
        )
    print(f"dpo / sft step time: {dpo['step_s'] / sft['step_s']:.3f}")
    print(
        f"reference pre-pass: {dpo['prepass_s_per_pair'] * 1000:.1f} ms per pair, once "
        f"({dpo['prepass_s_per_pair'] * PAIRS / dpo['step_s']:.2f} x one DPO step per global batch)"
    )
    print(
        f"frozen copy instead: +{frozen['step_s']:.3f} s per step "
        f"(+{frozen['step_s'] / dpo['step_s']:.0%}), +{frozen['weight_bytes'] / 2**20:.1f} MiB "
        "of weights held for the whole run"
    )


if __name__ == "__main__":
    main()
