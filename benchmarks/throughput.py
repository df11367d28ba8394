"""CPU training throughput: this library against plain Hugging Face transformers.

    python -m benchmarks.throughput [--steps 6] [--profile]     (from the repo root)

Same LLaMA shape, same random data, same global batch, fp32, one thread per
process, in one run:
- 1 process:  our engine + train_step (megatron-core GPTModel, megatron Adam
  with grad clipping)  vs  transformers LlamaForCausalLM + torch AdamW +
  clip_grad_norm_ (SDPA attention);
- 2 processes: our TP2 and our DP2  vs  transformers under torch DDP (gloo).
Both sides are built in the same processes and their steps alternate, so a
change in the (shared) machine's load hits both; tokens/s is the global
batch's tokens over the fastest timed step after warm-up (load from other
processes only slows steps down); the ratio is ours / transformers. `--profile` prints
each side's top ops by self CPU time (torch.profiler, one step, rank 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from chatbaker_megatron.config.optim import OptimConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from tests.parallel.harness import Pools
from tests.support.tiny_model import TINY_MODEL, micro_batches

# The tests' tiny model, 4x wider (the size docs/performance.md reports).
MODEL = dataclasses.replace(
    TINY_MODEL, hidden_size=256, ffn_hidden_size=704, max_position_embeddings=256
)
VOCAB, SEQ, GLOBAL_BATCH = 8192, 256, 8
WARMUP = 2
OPTIM = OptimConfig(lr=3e-4, min_lr=3e-4, weight_decay=0.1, clip_grad=1.0, warmup_iters=0)


def _profile(step: Any) -> str:
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def ours(par: ParallelConfig) -> Any:
    """This rank's training step of our engine on this layout (one micro-batch per DP rank)."""
    from chatbaker_megatron import parallel
    from chatbaker_megatron.training.engine import build_engine
    from chatbaker_megatron.training.step import train_step

    ctx = parallel.initialize(par, seed=1)
    engine = build_engine(
        MODEL,
        par,
        OPTIM,
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        train_iters=1000,
        global_batch_size=GLOBAL_BATCH,
    )
    batches = micro_batches(par.micro_batch_size, ctx.dp, ctx.dp_rank, GLOBAL_BATCH, SEQ, VOCAB)
    return lambda: train_step(engine, batches, global_batch_size=GLOBAL_BATCH)


def transformers_baseline() -> Any:
    """This rank's step of LlamaForCausalLM + AdamW, under DDP when there are several ranks."""
    import torch
    import torch.distributed as dist
    import transformers

    world, rank = dist.get_world_size(), dist.get_rank()
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=MODEL.hidden_size,
        intermediate_size=MODEL.ffn_hidden_size,
        num_hidden_layers=MODEL.num_layers,
        num_attention_heads=MODEL.num_attention_heads,
        num_key_value_heads=MODEL.kv_heads,
        max_position_embeddings=MODEL.max_position_embeddings,
        rms_norm_eps=MODEL.norm_epsilon,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    model = transformers.LlamaForCausalLM(config)
    model.train()
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=OPTIM.lr,
        betas=(OPTIM.adam_beta1, OPTIM.adam_beta2),
        eps=OPTIM.adam_eps,
        weight_decay=OPTIM.weight_decay,
    )
    (batch,) = micro_batches(GLOBAL_BATCH // world, world, rank, GLOBAL_BATCH, SEQ, VOCAB)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = model(input_ids=batch["tokens"]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, VOCAB), batch["labels"].reshape(-1)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM.clip_grad)
        optimizer.step()

    return step


def compare(par: ParallelConfig, steps: int, profile: bool) -> dict[str, Any]:
    """Per rank: the fastest step of ours and of transformers, their steps alternating.

    The machine is shared: the two sides run turn about, so a lasting load
    change hits both, and each side's fastest timed step is kept, since
    other processes' load can only slow a step down.
    """
    import torch.distributed as dist

    sides = {"ours": ours(par), "transformers": transformers_baseline()}
    for step in sides.values():
        for _ in range(WARMUP):
            step()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(steps):
        for name, step in sides.items():
            dist.barrier()
            start = time.perf_counter()
            step()
            dist.barrier()
            times[name].append(time.perf_counter() - start)
    out: dict[str, Any] = {}
    for name, step in sides.items():
        seconds = min(times[name])
        # Every rank runs the profiled step (its collectives need all of them).
        table = _profile(step) if profile else None
        out[name] = {
            "tokens_per_s": GLOBAL_BATCH * SEQ / seconds,
            "step_s": seconds,
            "profile": table if dist.get_rank() == 0 else None,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--profile", action="store_true", help="print top ops per side")
    args = parser.parse_args()
    print(
        f"model: {MODEL.num_layers} layers, hidden {MODEL.hidden_size}, heads "
        f"{MODEL.num_attention_heads} (kv {MODEL.kv_heads}), ffn {MODEL.ffn_hidden_size}, "
        f"vocab {VOCAB}; seq {SEQ}, global batch {GLOBAL_BATCH}; fp32, 1 thread per process"
    )
    runs = {
        "1 proc": (1, ParallelConfig(micro_batch_size=GLOBAL_BATCH)),
        "2 proc TP2": (2, ParallelConfig(tp=2, micro_batch_size=GLOBAL_BATCH)),
        "2 proc DP2": (2, ParallelConfig(micro_batch_size=GLOBAL_BATCH // 2)),
    }
    pools = Pools()
    try:
        for name, (world, par) in runs.items():
            result = pools.run(world, compare, par, args.steps, args.profile)[0]
            mine, base = result["ours"], result["transformers"]
            print(
                f"{name:11s} ours {mine['tokens_per_s']:7.0f} tok/s ({mine['step_s']:.3f} s/step)  "
                f"transformers{' DDP' if world > 1 else ''} {base['tokens_per_s']:7.0f} tok/s "
                f"({base['step_s']:.3f} s/step)  ours/transformers "
                f"{mine['tokens_per_s'] / base['tokens_per_s']:.2f}"
            )
            if args.profile:
                print(f"--- ours, {name}\n{mine['profile']}")
                print(f"--- transformers, {name}\n{base['profile']}")
    finally:
        pools.close()


if __name__ == "__main__":
    main()
