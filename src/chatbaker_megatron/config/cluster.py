"""Where a run executes: the `cluster` Hydra group (conf/cluster/*.yaml).

Hardware constants are stated with their sources in the YAML files; the
trainer's MFU and the planner's predictions are computed from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class AcceleratorSpec:
    name: str = "cpu"
    # Dense peak of one device at the run's precision, in TFLOP/s.
    peak_tflops: float = 0.192
    memory_gib: float = 24.0
    memory_bandwidth_gbs: float = 40.0  # GB/s, device memory


@dataclass
class ClusterConfig:
    name: str = "local_cpu"
    nodes: int = 1
    # Processes per node; one per GPU on GPU clusters.
    devices_per_node: int = 2
    precision: str = "fp32"
    device: AcceleratorSpec = field(default_factory=AcceleratorSpec)
    # Per-direction bandwidth one device gets, in GB/s: inside a node
    # (NVLink/NVSwitch) and across nodes (its share of the node's NICs).
    intra_node_bandwidth_gbs: float = 10.0
    inter_node_bandwidth_gbs: float = 10.0
    sources: str = ""

    @property
    def world_size(self) -> int:
        return self.nodes * self.devices_per_node
