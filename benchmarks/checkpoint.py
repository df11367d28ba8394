"""Checkpoint save stall: synchronous saves against background ones (checkpoint.async_save).

    python -m benchmarks.checkpoint [--saves 3] [--hidden 768] [--layers 6] [--local-optimizer]

A LLaMA of ~60M parameters (default shape; fp32 with Adam: ~1 GB of
checkpoint) on 2 gloo ranks, DP2 with the distributed optimizer (or the
local one: `--local-optimizer`), training steps between saves, in one run. Per save, on every rank (the slowest rank
is reported):
- sync: how long `save_checkpoint` blocks training (write, fsync, checksums,
  manifest, `latest`);
- background: how long `BackgroundSaves.start` blocks (the state snapshot and
  the writer's fork) plus how long the per-step polls block, the one that
  publishes included (checksums, manifest, `latest`); and how many seconds
  after the start the checkpoint was published, while training went on.
Also the mean step time with no writer running and with one running (the
writers compete with training for this machine's 2 cores; on a GPU node
they use idle host CPUs).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from typing import Any

from chatbaker_megatron.config.optim import OptimConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from tests.parallel.harness import Pools
from tests.support.tiny_model import TINY_MODEL, micro_batches

VOCAB, SEQ, GLOBAL_BATCH = 16384, 128, 4
OPTIM = OptimConfig(lr=1e-4, min_lr=1e-4, warmup_iters=0)
STEPS_BETWEEN_SAVES = 3


def measure(
    root: str, saves: int, hidden: int, layers: int, distributed_optimizer: bool
) -> dict[str, Any]:
    """This rank's stalls and step times, both modes (runs in a ranks pool)."""
    import torch.distributed as dist

    from chatbaker_megatron import parallel
    from chatbaker_megatron.checkpoint.background import BackgroundSaves
    from chatbaker_megatron.checkpoint.save import save_checkpoint
    from chatbaker_megatron.checkpoint.state import TrainState
    from chatbaker_megatron.training.engine import build_engine
    from chatbaker_megatron.training.step import train_step

    model = dataclasses.replace(
        TINY_MODEL,
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=hidden // 64,
        ffn_hidden_size=hidden * 8 // 3 // 64 * 64,
        max_position_embeddings=SEQ,
    )
    par = ParallelConfig(micro_batch_size=2, distributed_optimizer=distributed_optimizer)
    ctx = parallel.initialize(par, seed=1)
    engine = build_engine(
        model,
        par,
        OPTIM,
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        train_iters=1000,
        global_batch_size=GLOBAL_BATCH,
    )
    batches = micro_batches(par.micro_batch_size, ctx.dp, ctx.dp_rank, GLOBAL_BATCH, SEQ, VOCAB)
    params = sum(p.numel() for p in engine.chunks[0].parameters())
    config = {"name": "benchmark"}

    def step() -> float:
        started = time.perf_counter()
        train_step(engine, batches, global_batch_size=GLOBAL_BATCH)
        return time.perf_counter() - started

    step()  # warm-up, and the optimizer state exists from here on
    out: dict[str, Any] = {"params": params, "sync": [], "background": [], "idle_steps": []}
    for i in range(saves):
        dist.barrier()
        started = time.perf_counter()
        save_checkpoint(f"{root}/sync", engine, TrainState(iteration=i + 1), config, keep_last=1)
        out["sync"].append(time.perf_counter() - started)
        out["idle_steps"] += [step() for _ in range(STEPS_BETWEEN_SAVES)]

    writer = BackgroundSaves()
    busy_steps = []
    for i in range(saves):
        dist.barrier()
        started = time.perf_counter()
        writer.start(f"{root}/background", engine, TrainState(iteration=i + 1), config, keep_last=1)
        start_stall = time.perf_counter() - started
        published, poll_stall = None, 0.0
        while published is None:
            busy_steps.append(step())
            polled = time.perf_counter()
            published = writer.poll()
            poll_stall += time.perf_counter() - polled
        out["background"].append(
            {
                "start": start_stall,
                "polls": poll_stall,
                "stall": start_stall + poll_stall,
                "published_after": time.perf_counter() - started,
            }
        )
    out["busy_steps"] = busy_steps
    size = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(f"{root}/sync")
        for f in files
    )
    out["checkpoint_bytes"] = size
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument(
        "--local-optimizer",
        action="store_true",
        help="megatron's local optimizer instead of the distributed one (whose state is "
        "gathered to DP rank 0 for every save, before any writing starts)",
    )
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="chatbaker-ckpt-bench-")
    pools = Pools()
    try:
        ranks = pools.run(
            2,
            measure,
            root,
            args.saves,
            args.hidden,
            args.layers,
            not args.local_optimizer,
            timeout=3600,
        )
    finally:
        pools.close()
        shutil.rmtree(root, ignore_errors=True)
    first = ranks[0]
    optimizer = "local" if args.local_optimizer else "distributed"
    print(
        f"model: {first['params'] / 1e6:.0f}M parameters, fp32 + Adam, 2 ranks (DP2, {optimizer} "
        f"optimizer); checkpoint {first['checkpoint_bytes'] / 1e9:.2f} GB"
    )
    print(
        f"{'save':>4}  {'sync stall s':>12}  {'background stall s':>18}  "
        f"{'(start + polls)':>15}  {'published after s':>17}"
    )
    for i in range(args.saves):
        sync = max(r["sync"][i] for r in ranks)
        slowest = max((r["background"][i] for r in ranks), key=lambda b: b["stall"])
        after = max(r["background"][i]["published_after"] for r in ranks)
        parts = f"{slowest['start']:.2f} + {slowest['polls']:.2f}"
        print(f"{i + 1:>4}  {sync:>12.2f}  {slowest['stall']:>18.2f}  {parts:>15}  {after:>17.2f}")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    sync_mean = mean([max(r["sync"][i] for r in ranks) for i in range(args.saves)])
    stall_mean = mean([max(r["background"][i]["stall"] for r in ranks) for i in range(args.saves)])
    print(
        f"mean stall per save: sync {sync_mean:.2f} s, background {stall_mean:.2f} s "
        f"({sync_mean / stall_mean:.1f}x less)"
    )
    print(
        f"step time: {mean(first['idle_steps']):.2f} s with no writer, "
        f"{mean(first['busy_steps']):.2f} s while one writes (2 cores shared)"
    )


if __name__ == "__main__":
    main()
