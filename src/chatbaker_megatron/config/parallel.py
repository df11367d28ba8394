"""Parallel layout config: the `parallel` Hydra group (conf/parallel/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from chatbaker_megatron.config.checks import Choice, ConfigError, bounded, check_values


class RecomputeMode(Choice):
    """Activation recompute: none | selective (core attention) | full (whole layers)."""

    none = "none"
    selective = "selective"
    full = "full"


@dataclass
class ParallelConfig:
    """How one model replica is split, and how replicas share the batch.

    The data-parallel size is what is left of the world: world / (tp * pp * cp).
    """

    tp: int = bounded(1, ge=1)  # tensor parallel size
    sp: bool = False  # sequence parallel (needs tp > 1)
    pp: int = bounded(1, ge=1)  # pipeline parallel size
    vpp: int | None = bounded(
        None, ge=1
    )  # virtual pipeline stages (model chunks) per pipeline rank
    cp: int = bounded(1, ge=1)  # context parallel size (only 1 is supported for now)
    # Expected data-parallel size; null derives it from the world size. When
    # set, a world size that does not give this DP is an error.
    dp: int | None = bounded(None, ge=1)
    micro_batch_size: int = bounded(1, ge=1)
    recompute: RecomputeMode = RecomputeMode.none
    # With recompute=full: layers per recomputed block (uniform method).
    recompute_num_layers: int = bounded(1, ge=1)
    # ZeRO-1: shard the fp32 main params and optimizer state over data-parallel ranks.
    distributed_optimizer: bool = False
    # Overlap the DP grad reduce-scatter/all-reduce with backward (CUDA only;
    # null = on with CUDA, off on CPU where there are no streams to overlap on).
    overlap_grad_reduce: bool | None = None
    # Overlap the distributed optimizer's param all-gather with the next forward
    # (megatron's overlap_param_gather: needs distributed_optimizer and the grad
    # reduce overlapped; null = on wherever those two are).
    overlap_param_gather: bool | None = None

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible key of this group (world-size
        rules need the cluster: schema.validate)."""
        check_values(self, "parallel.")
        if self.cp != 1:
            raise ConfigError(f"parallel.cp={self.cp}: only context parallel size 1 is supported")
        if self.sp and self.tp == 1:
            raise ConfigError("parallel.sp=True: sequence parallel needs parallel.tp > 1")
        if self.vpp is not None and self.pp == 1:
            raise ConfigError(f"parallel.vpp={self.vpp}: virtual stages need parallel.pp > 1")
        if self.overlap_param_gather and not self.distributed_optimizer:
            raise ConfigError(
                "parallel.overlap_param_gather=True: needs parallel.distributed_optimizer=true "
                "(it overlaps that optimizer's all-gather)"
            )
        if self.overlap_param_gather and self.overlap_grad_reduce is False:
            raise ConfigError(
                "parallel.overlap_param_gather=True: needs parallel.overlap_grad_reduce "
                "(megatron overlaps both or only the reduce)"
            )

    def overlaps(self, on_gpu: bool) -> Overlaps:
        """The communication overlaps this layout runs with on GPUs (on_gpu) or CPUs."""
        grad_reduce = (
            (on_gpu or bool(self.overlap_param_gather))
            if self.overlap_grad_reduce is None
            else self.overlap_grad_reduce
        )
        possible = grad_reduce and self.distributed_optimizer
        param_gather = possible if self.overlap_param_gather is None else self.overlap_param_gather
        return Overlaps(grad_reduce=grad_reduce, param_gather=param_gather)


@dataclass(frozen=True)
class Overlaps:
    """What megatron's DDP overlaps with compute (the one place this is decided)."""

    grad_reduce: bool
    param_gather: bool

    def describe(self) -> str:
        on = [name for name, used in (("grad reduce", self.grad_reduce),
                                      ("param gather", self.param_gather)) if used]  # fmt: skip
        return ", ".join(on) if on else "none"


# Nothing overlapped: the CPU default, and what a bare `build_engine` call gets.
NO_OVERLAPS = Overlaps(grad_reduce=False, param_gather=False)
