"""Planner predictions next to measurements on the real model (CPU, gloo ranks).

    python -m benchmarks.plan_validation        (from the repo root; ~2 min on 2 cores)

Prints, with their ratios:
1. activation bytes saved for backward, per layer and outside the layers,
   counted with saved_tensors_hooks (TP1/TP2, SP, recompute none/selective/full,
   fp32/bf16), next to Korthikanti et al.'s GPT formula at the same shape;
2. communication bytes per step by group and collective on 2 and 8 ranks;
3. the pipeline bubble: (p-1)/(v*m), the idle fraction of megatron's recorded
   schedule replayed with fixed step costs, and the wall-clock idle fraction
   observed on this machine (CPU ranks, gloo: noisy, and p2p latency is large
   next to the compute of a small model).
The tests (tests/parallel/test_plan_validation_*.py) assert the exact ones.
"""

from __future__ import annotations

import dataclasses

from rich.console import Console
from rich.table import Table

from chatbaker_megatron.config.parallel import ParallelConfig, RecomputeMode
from chatbaker_megatron.plan import activations as act
from tests.parallel.harness import Pools
from tests.support import plan_validation
from tests.support.counters import ScheduleEvent, observed_idle_fraction, replay_idle_fraction
from tests.support.tiny_model import SEQ, TINY_MODEL

# Bubble timing runs a model big enough that compute, not gloo latency, fills the steps.
TIMING_MODEL = dataclasses.replace(TINY_MODEL, num_layers=8, hidden_size=256, ffn_hidden_size=704)
TIMING_CASES = {
    "pp2 m=8": ParallelConfig(pp=2, micro_batch_size=1),
    "pp2 vpp2 m=8": ParallelConfig(pp=2, vpp=2, micro_batch_size=1),
}
TIMING_BATCH, TIMING_SEQ = 8, 128


def _ratio(measured: float, predicted: float) -> str:
    return f"{measured / predicted:.4f}" if predicted else "-"


def activations(pools: Pools, console: Console) -> None:
    table = Table(title="Activation bytes saved for backward, one micro-batch (s=16, b=2, h=64)")
    for col in ("case", "recompute", "layer meas.", "layer pred.", "ratio"):
        table.add_column(col, justify="right")
    for col in ("outside meas.", "outside pred.", "ratio", "GPT formula"):
        table.add_column(col, justify="right")
    for name, (tp, sp, bf16) in plan_validation.ACTIVATION_CASES.items():
        saved = pools.run(tp, plan_validation.measure_saved, tp, sp, bf16)[0]["saved"]
        for recompute in RecomputeMode:
            layer, outside = plan_validation.split_saved(saved, recompute)
            want_layer, want_outside = plan_validation.predicted_saved(tp, sp, bf16, recompute)
            shape = act.Shape(SEQ, plan_validation.MICRO, tp, sp, act_bytes=2 if bf16 else 4)
            # Korthikanti's count is for 16-bit GPT layers; scaled to this dtype.
            gpt = act.korthikanti_gpt_layer_bytes(TINY_MODEL, shape, recompute)
            gpt *= shape.act_bytes / 2
            table.add_row(
                name,
                recompute,
                str(layer),
                str(want_layer),
                _ratio(layer, want_layer),
                str(outside),
                str(want_outside),
                _ratio(outside, want_outside),
                f"{gpt:.0f}",
            )
    console.print(table)


def communication(pools: Pools, console: Console) -> dict[str, list[dict]]:
    table = Table(title="Communication bytes per training step, per rank (s=16, global batch 8)")
    for col in ("case", "pp rank", "group", "op", "measured", "predicted", "ratio"):
        table.add_column(col, justify="right")
    results = {}
    for name, (world, model, par) in plan_validation.COMM_CASES.items():
        results[name] = pools.run(world, plan_validation.measure_step, model, par)
        seen = set()
        for result in results[name]:
            if result["pp_rank"] in seen:
                continue  # ranks of one pipeline stage move the same bytes
            seen.add(result["pp_rank"])
            want = plan_validation.predicted_volume(model, par, result["dp"], result["pp_rank"])
            for key in sorted(set(want) | set(result["volume"])):
                got, pred = result["volume"].get(key, 0), want.get(key, 0)
                table.add_row(
                    name, str(result["pp_rank"]), *key, str(got), str(pred), _ratio(got, pred)
                )
            if result["unaccounted"]:
                table.add_row(name, str(result["pp_rank"]), "?", str(result["unaccounted"]))
    console.print(table)
    return results


def bubble(pools: Pools, console: Console, comm_results: dict[str, list[dict]]) -> None:
    table = Table(title="Pipeline bubble: idle fraction of the step")
    for col in ("case", "p", "v", "m", "(p-1)/(v*m)", "formula idle", "replayed", "wall-clock"):
        table.add_column(col, justify="right")

    def add(name: str, par: ParallelConfig, results: list[dict]) -> None:
        orders = plan_validation.pipeline_orders(results)
        p, v = par.pp, par.vpp or 1
        m = len(orders[0]) // (2 * v)
        replica = sorted(
            (r for r in results if r["tp_rank"] == 0 and r["dp_rank"] == 0),
            key=lambda r: r["pp_rank"],
        )
        events = [[ScheduleEvent(*e) for e in r["events"]] for r in replica]
        observed = observed_idle_fraction(events)
        table.add_row(
            name,
            str(p),
            str(v),
            str(m),
            f"{(p - 1) / (v * m):.3f}",
            f"{(p - 1) / (v * m + p - 1):.3f}",
            " ".join(f"{x:.3f}" for x in replay_idle_fraction(orders)),
            " ".join(f"{x:.3f}" for x in observed),
        )

    for name, (_world, _model, par) in plan_validation.COMM_CASES.items():
        if par.pp > 1:
            add(name, par, comm_results[name])
    for name, par in TIMING_CASES.items():
        results = pools.run(
            2,
            plan_validation.measure_step,
            TIMING_MODEL,
            par,
            global_batch=TIMING_BATCH,
            seq=TIMING_SEQ,
            warmup_steps=1,
        )
        add(f"{name} (h=256, s=128)", par, results)
    console.print(table)


def main() -> None:
    console = Console(width=160)
    pools = Pools()
    try:
        activations(pools, console)
        comm_results = communication(pools, console)
        bubble(pools, console, comm_results)
    finally:
        pools.close()


if __name__ == "__main__":
    main()
