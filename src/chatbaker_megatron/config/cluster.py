"""Where a run executes: the `cluster` Hydra group (conf/cluster/*.yaml).

Hardware constants are stated with their sources in the YAML files; the
trainer's MFU and the planner's predictions are computed from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chatbaker_megatron.config.checks import Choice, bounded, check_values


class Precision(Choice):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


@dataclass
class AcceleratorSpec:
    name: str = "cpu"
    # Dense peak of one device at the run's precision, in TFLOP/s. The defaults are
    # nominal CPU figures, stated so that MFU has a defined denominator on CPU, not
    # measurements: 2 cores x 3.0 GHz x 32 fp32 FLOP/cycle (AVX2: 2 FMA units x 8 lanes x 2).
    peak_tflops: float = bounded(0.192, gt=0)
    memory_gib: float = bounded(24.0, gt=0)
    memory_bandwidth_gbs: float = bounded(40.0, gt=0)  # GB/s, device memory


@dataclass
class ClusterConfig:
    """The defaults are conf/cluster/local_cpu.yaml: two CPU processes on this machine (gloo)."""

    name: str = "local_cpu"
    nodes: int = bounded(1, ge=1)
    # Processes per node; one per GPU on GPU clusters.
    devices_per_node: int = bounded(2, ge=1)
    precision: Precision = Precision.fp32
    device: AcceleratorSpec = field(default_factory=AcceleratorSpec)
    # Per-direction bandwidth one device gets, in GB/s: inside a node
    # (NVLink/NVSwitch) and across nodes (its share of the node's NICs).
    intra_node_bandwidth_gbs: float = bounded(10.0, gt=0)
    inter_node_bandwidth_gbs: float = bounded(10.0, gt=0)
    # Timeout of every collective (process groups, megatron's
    # --distributed-timeout-minutes): a collective that does not return by
    # then fails the rank (gloo raises; NCCL aborts and dumps its flight
    # recorder to <run_dir>/hangs/).
    distributed_timeout_minutes: int = bounded(30, ge=1)
    # GPU pre-flight before training (platform/preflight.py; skipped on CPU):
    # a bf16 GEMM per GPU and an all-reduce per node; a GPU or node below the
    # median of its peers divided by the factor is named in a warning.
    preflight: bool = True
    preflight_slow_factor: float = bounded(1.25, gt=1)
    sources: str = "nominal CPU figures; see comments"

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible key of this group."""
        check_values(self, "cluster.")

    @property
    def world_size(self) -> int:
        return self.nodes * self.devices_per_node
