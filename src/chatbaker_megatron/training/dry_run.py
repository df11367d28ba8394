"""`chatbaker train <overrides> --dry-run [--ranks 0,37,255] [--json]`: the real layout, no cluster.

For each named rank, one CPU process builds that rank's megatron-core model
shard, DDP buffers and optimizer through the project's own builders
(training/engine.py build_run_engine), at full size but as fake tensors
(FakeTensorMode: shapes and dtypes, no memory), in a world of the run's size
made of torch's fake process group: every process group the real run creates
exists, and collectives (DDP's broadcast_params, the optimizer's) are no-ops.
It reports what the rank holds (parameters, bytes of weights, gradient buffer,
optimizer state) next to `chatbaker plan`'s memory model for the same rank
(plan/memory.py model_state); weights, grads and optimizer bytes must agree.
It also reports what each checkpoint format costs the rank (bytes written,
gathered, and allocated by a load: checkpoint/sizes.py, training/checkpoint_report.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from megatron.core.utils import get_model_config
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.testing._internal.distributed.fake_pg import FakeStore

from chatbaker_megatron import parallel
from chatbaker_megatron.checkpoint.sizes import CheckpointCost, checkpoint_cost
from chatbaker_megatron.config.parallel import Overlaps
from chatbaker_megatron.config.schema import RunConfig
from chatbaker_megatron.plan.candidates import workload_of
from chatbaker_megatron.plan.memory import ModelState, model_state
from chatbaker_megatron.plan.reference import reference_model_line
from chatbaker_megatron.training.checkpoint_report import (
    checkpoint_json,
    checkpoint_lines,
    checkpoint_summary,
)
from chatbaker_megatron.training.engine import Engine, build_run_engine

COMPARED = ("weights", "grads", "optimizer")


@dataclasses.dataclass(frozen=True)
class RankReport:
    rank: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    built: ModelState  # what the built shard holds
    planned: ModelState  # plan/memory.py for the same (pp_rank, dp_rank)
    checkpoint: CheckpointCost  # what each checkpoint format costs this rank

    @property
    def mismatches(self) -> list[str]:
        return [k for k in COMPARED if getattr(self.built, k) != getattr(self.planned, k)]


def default_ranks(cfg: RunConfig) -> list[int]:
    """The first and last global rank of every pipeline stage (megatron's rank order puts
    pipeline stages outermost: stage p is ranks p*world/pp .. (p+1)*world/pp - 1)."""
    world, pp = cfg.cluster.world_size, cfg.parallel.pp
    per_stage = world // pp
    return sorted({r for p in range(pp) for r in (p * per_stage, (p + 1) * per_stage - 1)})


@contextlib.contextmanager
def fake_world(rank: int, world_size: int) -> Iterator[None]:
    """torch.distributed as rank `rank` of `world_size` on the fake backend, torn down after.

    megatron also opens gloo groups (for object exchanges); a real gloo group
    would wait for peers that do not exist, so they are opened on the fake
    backend too. Object all-gathers (the optimizer's param-group keys) answer
    with this rank's object for every rank.
    """
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    new_group = dist.new_group

    def fake_new_group(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("backend") == "gloo":
            kwargs["backend"] = None
        return new_group(*args, **kwargs)

    all_gather_object = dist.all_gather_object

    # dist.all_gather_object's signature.
    def mirror_all_gather_object(
        object_list: list[Any], obj: Any, group: Any = None, weights_only: bool = False
    ) -> None:
        # The fake backend moves no data (and under fake tensors the object
        # sizes cannot be read back): every rank is taken to hold this rank's object.
        object_list[:] = [obj] * len(object_list)

    dist.new_group = fake_new_group
    dist.all_gather_object = mirror_all_gather_object
    try:
        yield
    finally:
        dist.new_group = new_group
        dist.all_gather_object = all_gather_object
        parallel.destroy_model_parallel()
        dist.destroy_process_group()


def on_gpu(cfg: RunConfig) -> bool:
    """Whether the run trains on GPUs (its overlaps are resolved for them)."""
    return cfg.cluster.device.name != "cpu"


def overlaps(cfg: RunConfig) -> Overlaps:
    """As the trainer resolves them on the run's devices (on by default on GPUs)."""
    return cfg.parallel.overlaps(on_gpu=on_gpu(cfg))


def held_state(engine: Engine) -> ModelState:
    """Parameters and bytes the built engine holds, read from megatron's own buffers."""
    sixteen_bit = get_model_config(engine.chunks[0]).params_dtype != torch.float32
    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    params = sum(p.numel() for chunk in engine.chunks for p in chunk.parameters())
    weights = grads = optimizer = 0
    for chunk in engine.chunks:
        for buffer in chunk.buffers:
            # With the distributed optimizer param.data is a view into param_data.
            if buffer.param_data is not None:
                weights += nbytes(buffer.param_data)
            else:
                weights += sum(nbytes(p) for p in buffer.params)
            grads += nbytes(buffer.grad_data)
    for opt in engine.optimizer.chained_optimizers:
        # Adam's moments appear at the first step; the real run's init_state_fn makes them now.
        opt.init_state_fn(opt.optimizer, opt.config)
        for group in opt.optimizer.param_groups:
            for main in group["params"]:
                # 16-bit runs keep fp32 main weights of their own; in fp32 they are the weights.
                optimizer += nbytes(main) if sixteen_bit else 0
                state = opt.optimizer.state[main]
                optimizer += sum(nbytes(t) for t in state.values() if t.dim() > 0)
    return ModelState(params, weights, grads, optimizer)


def _fake_tensors() -> FakeTensorMode:
    """Fake tensors that Float16Module can convert to 16 bits.

    torch swaps a fake parameter for its converted copy, which fails while
    anything holds a weak reference to it: the converter's memo of the tensors
    it faked (megatron creates some weights outside the mode's factories) and
    the ShapeEnv do, so the memo holds its (memory-less) fakes strongly and
    shapes are static.
    """
    mode = FakeTensorMode(allow_non_fake_inputs=True, static_shapes=True)
    # A plain dict on purpose (strong references), where torch types a WeakValueDictionary.
    mode.fake_tensor_converter.meta_converter.tensor_memo = {}  # type: ignore[assignment]
    return mode


def _adam_steps(engine: Engine) -> None:
    """Adam's step counters, as the first step makes them. Made from a Python number
    under the fake mode, they keep their value, which megatron reads with `.item()`
    when it builds the optimizer's state dict."""
    for opt in engine.optimizer.chained_optimizers:
        for state in opt.optimizer.state.values():
            state.setdefault("step", torch.tensor(0.0))


def dry_run_rank(cfg: RunConfig, rank: int) -> RankReport:
    """Build rank `rank`'s shard of the run as fake tensors and compare it with the planner."""
    assert cfg.model.vocab_size is not None, "run() refuses a config without model.vocab_size"
    with fake_world(rank, cfg.cluster.world_size):
        ctx = parallel.initialize(cfg.parallel, seed=cfg.train.seed)
        with _fake_tensors():
            engine = build_run_engine(cfg, vocab_size=cfg.model.vocab_size, on_gpu=on_gpu(cfg))
            built = held_state(engine)
            _adam_steps(engine)
            cost = checkpoint_cost(engine, one_rank_view=True)
    planned = model_state(workload_of(cfg), cfg.parallel, ctx.dp, ctx.pp_rank, ctx.dp_rank)
    return RankReport(rank, ctx.tp_rank, ctx.pp_rank, ctx.dp_rank, built, planned, cost)


def _gib(n: int) -> str:
    return f"{n / 2**30:.3f}"


def render(cfg: RunConfig, reports: list[RankReport], seconds: float) -> None:
    par = cfg.parallel
    print(
        f"dry run of {cfg.name}: world {cfg.cluster.world_size}, tp={par.tp} pp={par.pp} "
        f"vpp={par.vpp} dp={cfg.cluster.world_size // (par.tp * par.pp * par.cp)}, "
        f"{cfg.cluster.precision}, distributed_optimizer={par.distributed_optimizer}, "
        f"overlapped: {overlaps(cfg).describe()}"
    )
    print(
        f"{'rank':>5} {'tp':>3} {'pp':>3} {'dp':>4} {'params':>14} "
        + " ".join(f"{k + ' GiB':>14}" for k in COMPARED)
        + "  plan"
    )
    for r in reports:
        row = " ".join(f"{_gib(getattr(r.built, k)):>14}" for k in COMPARED)
        verdict = (
            "= plan"
            if not r.mismatches
            else "DIFFERS: "
            + ", ".join(
                f"{k} plan {getattr(r.planned, k)} B built {getattr(r.built, k)} B"
                for k in r.mismatches
            )
        )
        print(
            f"{r.rank:>5} {r.tp_rank:>3} {r.pp_rank:>3} {r.dp_rank:>4} {r.built.params:>14,} "
            f"{row}  {verdict}"
        )
    for line in checkpoint_lines(cfg, {r.rank: r.checkpoint for r in reports}):
        print(line)
    if cfg.data.kind == "preference":
        print(reference_model_line(max(r.built.weights for r in reports)))
    print(f"{len(reports)} ranks in {seconds:.1f}s (fake tensors: no memory allocated)")


def run(cfg: RunConfig, ranks: list[int] | None, as_json: bool) -> int:
    """Dry-run `ranks` (default: `default_ranks`); 1 when any differs from the planner."""
    if cfg.model.vocab_size is None:
        # Training takes the tokenizer's size; the dry run compares with the
        # planner, which has no tokenizer.
        sys.exit(
            "--dry-run needs model.vocab_size (null takes the tokenizer's size at train "
            "time): state the tokenizer's size, e.g. model.vocab_size=50304"
        )
    world = cfg.cluster.world_size
    ranks = ranks or default_ranks(cfg)
    bad = [r for r in ranks if not 0 <= r < world]
    if bad:
        sys.exit(f"invalid --ranks: {bad} outside the world of {world} ranks")
    # The same check `train` runs once the world exists (config validation ran already).
    parallel.data_parallel_size(cfg.parallel, world)
    started = time.perf_counter()
    reports = [dry_run_rank(cfg, r) for r in ranks]
    seconds = time.perf_counter() - started
    if as_json:
        data = {
            "name": cfg.name,
            "world_size": world,
            "parallel": dataclasses.asdict(cfg.parallel),
            "overlaps": dataclasses.asdict(overlaps(cfg)),
            "checkpoint": checkpoint_summary(cfg, {r.rank: r.checkpoint for r in reports}),
            "seconds": seconds,
            "ranks": [
                {
                    **{k: getattr(r, k) for k in ("rank", "tp_rank", "pp_rank", "dp_rank")},
                    "built": dataclasses.asdict(r.built),
                    "planned": dataclasses.asdict(r.planned),
                    "mismatches": r.mismatches,
                    "checkpoint": checkpoint_json(r.checkpoint),
                }
                for r in reports
            ],
        }
        json.dump(data, sys.stdout, indent=1)
        print()
    else:
        render(cfg, reports, seconds)
    return 1 if any(r.mismatches for r in reports) else 0
