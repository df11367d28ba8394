"""Enumerate the valid parallel layouts of a run and predict each one.

A layout is a ParallelConfig: TP (inside a node), SP, PP, VPP, micro batch,
recompute and the distributed optimizer; DP is what the world leaves. Every
layout goes through the same `config.schema.validate` the trainer runs, so
the planner never proposes a config that `chatbaker train` would refuse.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from chatbaker_megatron.config.parallel import Overlaps, ParallelConfig, RecomputeMode
from chatbaker_megatron.config.schema import ConfigError, RunConfig, validate
from chatbaker_megatron.model import sizes
from chatbaker_megatron.plan.assumptions import Assumptions
from chatbaker_megatron.plan.memory import GIB, Memory, peak_memory
from chatbaker_megatron.plan.steptime import StepTime, step_time
from chatbaker_megatron.plan.workload import Workload, num_microbatches

# The knobs a layout is made of, in the order tables show them.
KNOBS = ("tp", "sp", "pp", "vpp", "micro_batch_size", "recompute", "distributed_optimizer")


@dataclass(frozen=True)
class Candidate:
    parallel: ParallelConfig
    dp: int
    microbatches: int
    memory: Memory
    memory_limit: int
    time: StepTime
    tokens_per_s: float
    mfu: float  # model FLOPs (no recompute) / peak
    hfu: float  # hardware FLOPs (recompute included) / peak
    days: float  # to train the workload's token budget
    configured: bool  # the layout the run's config asks for
    cuda: bool  # the run's devices are GPUs (the overlaps' defaults)

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.memory_limit

    @property
    def overlaps(self) -> Overlaps:
        return self.parallel.overlaps(on_gpu=self.cuda)

    def knobs(self) -> dict[str, object]:
        return {knob: getattr(self.parallel, knob) for knob in KNOBS}


def workload_of(cfg: RunConfig) -> Workload:
    if cfg.model.vocab_size is None:
        raise ConfigError(
            "model.vocab_size=None: the planner needs the vocabulary size; "
            "override it, e.g. model.vocab_size=50304"
        )
    train = cfg.train
    if train.train_tokens is not None:
        train_tokens = float(train.train_tokens)
    else:
        assert train.train_iters is not None  # validated: exactly one of the two is set
        train_tokens = float(train.train_iters * train.global_batch_size * train.seq_length)
    return Workload(
        model=cfg.model,
        vocab_size=cfg.model.vocab_size,
        seq_length=train.seq_length,
        global_batch_size=train.global_batch_size,
        precision=cfg.cluster.precision,
        train_tokens=train_tokens,
        # The reference torch norm saves fp32 copies; any other backend is a
        # fused kernel that saves its input and the fp32 rstd (plan/activations.py).
        norm="torch" if cfg.model.kernels.norm == "torch" else "fused",
        cuda=cfg.cluster.device.name != "cpu",
    )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def layouts(cfg: RunConfig) -> Iterator[ParallelConfig]:
    """Every layout of the search space that `validate` accepts for this run.

    Raises ConfigError, with the first rejection's reason, when none is valid
    (then the rest of the config is at fault, e.g. seq_length > max positions).
    """
    first_error: ConfigError | None = None
    found = False
    model, cluster, base = cfg.model, cfg.cluster, cfg.parallel
    world = cluster.world_size
    for tp in _divisors(min(model.num_attention_heads, cluster.devices_per_node)):
        for pp in _divisors(model.num_layers):
            if world % (tp * pp):
                continue
            dp = world // (tp * pp)
            per_dp = cfg.train.global_batch_size // dp
            vpps = [None] + [v for v in _divisors(model.num_layers // pp) if v > 1 and pp > 1]
            micro = [b for b in _divisors(per_dp) if b & (b - 1) == 0] if per_dp else []
            knobs = itertools.product(
                (False, True) if tp > 1 else (False,),  # sp
                vpps,
                micro,
                RecomputeMode,
                (False, True) if dp > 1 else (False,),  # distributed optimizer
            )
            for sp, vpp, mbs, recompute, dist_opt in knobs:
                par = dataclasses.replace(
                    base,
                    tp=tp,
                    sp=sp,
                    pp=pp,
                    vpp=vpp,
                    dp=dp,
                    micro_batch_size=mbs,
                    recompute=recompute,
                    recompute_num_layers=1,
                    distributed_optimizer=dist_opt,
                )
                try:
                    validate(dataclasses.replace(cfg, parallel=par), world)
                except ConfigError as err:
                    first_error = first_error or err
                    continue
                found = True
                yield par
    if not found:
        raise ConfigError(f"no valid parallel layout for this run: {first_error}")


def _same_layout(a: ParallelConfig, b: ParallelConfig) -> bool:
    return all(getattr(a, knob) == getattr(b, knob) for knob in KNOBS)


def evaluate(cfg: RunConfig, par: ParallelConfig, work: Workload, assume: Assumptions) -> Candidate:
    cluster = cfg.cluster
    dp = cluster.world_size // (par.tp * par.pp)
    memory = peak_memory(work, par, dp, assume)
    time = step_time(work, par, dp, cluster, assume)
    tokens_per_s = work.tokens_per_step / time.total
    vocab = work.padded_vocab(par.tp)
    peak = cluster.world_size * cluster.device.peak_tflops * 1e12
    model_flops = sizes.model_flops_per_token(work.model, work.seq_length, vocab)
    hardware_flops = sizes.hardware_flops_per_token(
        work.model, work.seq_length, vocab, par.recompute
    )
    return Candidate(
        parallel=par,
        dp=dp,
        microbatches=num_microbatches(work, par, dp),
        memory=memory,
        memory_limit=int(cluster.device.memory_gib * GIB),
        time=time,
        tokens_per_s=tokens_per_s,
        mfu=model_flops * tokens_per_s / peak,
        hfu=hardware_flops * tokens_per_s / peak,
        days=work.train_tokens / tokens_per_s / 86400,
        configured=_same_layout(par, cfg.parallel),
        cuda=work.cuda,
    )


def rank(candidates: list[Candidate]) -> list[Candidate]:
    """Layouts that fit first, fastest first; then the rest, smallest memory first."""
    return sorted(
        candidates,
        key=lambda c: (not c.fits, c.time.total if c.fits else c.memory.total, c.memory.total),
    )


def plan(cfg: RunConfig, assume: Assumptions | None = None) -> list[Candidate]:
    """All valid layouts of this run, predicted and ranked."""
    assume = assume or Assumptions()
    work = workload_of(cfg)
    return rank([evaluate(cfg, par, work, assume) for par in layouts(cfg)])
