"""Present a plan: a ranked rich table with the reasons, or JSON with every component."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from chatbaker_megatron.config.schema import RunConfig
from chatbaker_megatron.model import sizes
from chatbaker_megatron.plan.assumptions import Assumptions
from chatbaker_megatron.plan.candidates import KNOBS, Candidate
from chatbaker_megatron.plan.memory import GIB
from chatbaker_megatron.plan.reference import reference_model_line
from chatbaker_megatron.plan.workload import Workload


def _yaml(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def overrides(candidate: Candidate, base: list[str]) -> list[str]:
    """Hydra overrides that run this layout: the user's (less parallel.*) plus the layout."""
    kept = [o for o in base if not o.lstrip("+~").startswith("parallel.")]
    knobs = candidate.knobs()
    layout = {**{k: knobs[k] for k in ("tp", "sp", "pp", "vpp")}, "dp": candidate.dp, **knobs}
    return kept + [f"parallel.{key}={_yaml(value)}" for key, value in layout.items()]


def candidate_dict(candidate: Candidate, base: list[str]) -> dict[str, Any]:
    return {
        "layout": {**candidate.knobs(), "dp": candidate.dp},
        "microbatches": candidate.microbatches,
        "configured": candidate.configured,
        "fits": candidate.fits,
        "memory_bytes": {
            **candidate.memory.parts(),
            "limit": candidate.memory_limit,
            "pipeline_rank": candidate.memory.pipeline_rank,
            "params": candidate.memory.params,
        },
        "step_seconds": candidate.time.parts(),
        "overlaps": dataclasses.asdict(candidate.overlaps),
        "tokens_per_s": candidate.tokens_per_s,
        "mfu": candidate.mfu,
        "hfu": candidate.hfu,
        "days": candidate.days,
        "overrides": overrides(candidate, base),
    }


def shown(candidates: list[Candidate], top: int) -> list[tuple[int, Candidate]]:
    """The top `top` (all when 0), plus the configured layout wherever it ranks."""
    picked = list(enumerate(candidates[: top or len(candidates)], start=1))
    picked += [
        (i, c) for i, c in enumerate(candidates, start=1) if c.configured and i > len(picked)
    ]
    return picked


def plan_dict(
    cfg: RunConfig,
    work: Workload,
    assume: Assumptions,
    candidates: list[Candidate],
    base: list[str],
    top: int,
) -> dict[str, Any]:
    return {
        "workload": {
            "model": cfg.model.name,
            "params": sizes.param_breakdown(work.model, work.padded_vocab(1)),
            "seq_length": work.seq_length,
            "global_batch_size": work.global_batch_size,
            "tokens_per_step": work.tokens_per_step,
            "train_tokens": work.train_tokens,
            "precision": work.precision,
            "norm_activation_profile": work.norm,
        },
        "cluster": {
            "name": cfg.cluster.name,
            "world_size": cfg.cluster.world_size,
            "devices_per_node": cfg.cluster.devices_per_node,
            "device": cfg.cluster.device.name,
            "peak_tflops": cfg.cluster.device.peak_tflops,
            "memory_gib": cfg.cluster.device.memory_gib,
            "intra_node_bandwidth_gbs": cfg.cluster.intra_node_bandwidth_gbs,
            "inter_node_bandwidth_gbs": cfg.cluster.inter_node_bandwidth_gbs,
            "sources": cfg.cluster.sources,
        },
        "assumptions": vars(assume),
        "searched": len(candidates),
        "fitting": sum(c.fits for c in candidates),
        "candidates": [{"rank": i, **candidate_dict(c, base)} for i, c in shown(candidates, top)],
    }


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def label(c: Candidate) -> str:
    """A layout in one token per knob, e.g. `tp2+sp pp4v2 dp32 mb2 full zero1`."""
    p = c.parallel
    parts = [
        f"tp{p.tp}{'+sp' if p.sp else ''}",
        f"pp{p.pp}{f'v{p.vpp}' if p.vpp else ''}",
        f"dp{c.dp}",
        f"mb{p.micro_batch_size}",
        p.recompute,
    ]
    return " ".join(parts + (["zero1"] if p.distributed_optimizer else []))


def _table(rows: list[tuple[int, Candidate]]) -> Table:
    table = Table(title="Layouts ranked by predicted step time (seconds per step by part)")
    for name in ("#", "layout", "m", "GiB"):
        table.add_column(name, justify="left" if name == "layout" else "right", no_wrap=True)
    for name in ("compute", "TP", "PP p2p", "bubble", "DP", "optim", "step"):
        table.add_column(name, justify="right")
    for name in ("Mtok/s", "MFU", "days"):
        table.add_column(name, justify="right")
    for i, c in rows:
        t = c.time
        style = "bold green" if i == 1 else ("yellow" if c.configured else None)
        table.add_row(
            f"{i}{'*' if c.configured else ''}",
            label(c),
            str(c.microbatches),
            _gib(c.memory.total) + ("" if c.fits else "!"),
            *(f"{v:.3f}" for v in (t.compute, t.tp_comm, t.pp_comm, t.bubble, t.dp_comm)),
            f"{t.optimizer:.3f}",
            f"{t.total:.3f}",
            f"{c.tokens_per_s / 1e6:.2f}",
            f"{c.mfu:.1%}",
            f"{c.days:.1f}",
            style=style,
        )
    return table


def _share(part: float, total: float) -> str:
    return f"{part:.3f} s ({part / total:.0%})"


def _alternatives(best: Candidate, candidates: list[Candidate]) -> list[str]:
    """For each knob, the best layout that sets it differently, and what it costs."""
    lines = []
    for knob in KNOBS:
        value = getattr(best.parallel, knob)
        other = next((c for c in candidates if getattr(c.parallel, knob) != value), None)
        if other is None:
            continue
        name = f"{knob}={_yaml(getattr(other.parallel, knob))}"
        if not other.fits:
            lines.append(f"{name}: nothing with it fits ({_gib(other.memory.total)} GiB at best)")
            continue
        slower = other.time.total / best.time.total - 1
        growth = {
            part: other.time.parts()[part] - seconds
            for part, seconds in best.time.parts().items()
            if part != "total"
        }
        worst = max(growth, key=lambda part: growth[part])
        lines.append(
            f"{name}: best is {label(other)}, {slower:.1%} slower "
            f"(+{growth[worst]:.3f} s {worst}; {_gib(other.memory.total)} GiB)"
        )
    return lines


def render(
    cfg: RunConfig,
    work: Workload,
    assume: Assumptions,
    candidates: list[Candidate],
    base: list[str],
    top: int,
    console: Console | None = None,
) -> None:
    # Piped output gets a fixed width wide enough for the table rather than 80 columns.
    console = console or Console(width=None if sys.stdout.isatty() else 150)
    cluster = cfg.cluster
    params = sizes.param_count(work.model, work.padded_vocab(1))
    console.print(
        f"[bold]{cfg.model.name}[/] ({params / 1e9:.2f}B params), seq {work.seq_length}, "
        f"global batch {work.global_batch_size} ({work.tokens_per_step / 1e6:.2f}M tokens), "
        f"{work.train_tokens / 1e12:.2f}T tokens, {work.precision}, on {cluster.name}: "
        f"{cluster.world_size} x {cluster.device.name} ({cluster.device.peak_tflops:g} TFLOP/s, "
        f"{cluster.device.memory_gib:g} GiB, NVLink {cluster.intra_node_bandwidth_gbs:g} GB/s, "
        f"inter-node {cluster.inter_node_bandwidth_gbs:g} GB/s per GPU)"
    )
    console.print(f"[dim]sources: {cluster.sources}[/]")
    console.print("[dim]assumed: " + "; ".join(assume.describe()) + "[/]")
    fitting = [c for c in candidates if c.fits]
    console.print(
        f"searched {len(candidates)} valid layouts; {len(fitting)} fit in "
        f"{cluster.device.memory_gib:g} GiB (! = does not fit, * = the configured layout)"
    )
    console.print(_table(shown(candidates, top)))
    if not fitting:
        console.print("[bold red]no layout fits in memory[/]")
        return
    best = fitting[0]
    mem, t = best.memory, best.time
    console.print("[bold]chosen[/]: " + " ".join(overrides(best, base)))
    console.print(f"overlapped with compute: {best.overlaps.describe()}")
    console.print(
        f"memory (pipeline rank {mem.pipeline_rank}, GiB): weights {_gib(mem.weights)}, "
        f"grads {_gib(mem.grads)}, optimizer {_gib(mem.optimizer)}, activations "
        f"{_gib(mem.activations)}, transient {_gib(mem.transient)}, allowance "
        f"{_gib(mem.allowance)} = {_gib(mem.total)} of {cluster.device.memory_gib:g}"
    )
    console.print(
        f"step {t.total:.3f} s: compute {_share(t.compute, t.total)}, TP {_share(t.tp_comm, t.total)}, "
        f"PP p2p {_share(t.pp_comm, t.total)}, bubble {_share(t.bubble, t.total)}, "
        f"DP {_share(t.dp_comm, t.total)}, optimizer {_share(t.optimizer, t.total)}; "
        f"{best.tokens_per_s / 1e6:.2f}M tokens/s, MFU {best.mfu:.1%} (HFU {best.hfu:.1%}), "
        f"{best.days:.1f} days"
    )
    if cfg.data.kind == "preference":
        epochs = cfg.data.preference.epochs
        console.print(reference_model_line(mem.weights, best.days, epochs))
    console.print("why not otherwise:")
    for line in _alternatives(best, fitting):
        console.print(f"  {line}")
    configured = next(((i, c) for i, c in enumerate(candidates, 1) if c.configured), None)
    if configured and configured[1] is not best:
        i, c = configured
        console.print(
            f"the configured layout ranks #{i}: {c.time.total:.3f} s/step, "
            f"{_gib(c.memory.total)} GiB, MFU {c.mfu:.1%}, {c.days:.1f} days"
        )
