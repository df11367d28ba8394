"""The one place that knows CPU vs CUDA.

- `device`: the `Platform` (compute device, collective device per process
  group, RNG state, process groups) from `detect()`;
- `compat`: the layer that lets megatron-core's own code run on CPU;
- `megatron_fixes`: megatron-core bugs fixed on every device;
- `device_rules`: the test mode that enforces NCCL's device rules on CPU.

Nothing else in the code base calls torch.cuda or names a backend.
"""

from __future__ import annotations

from chatbaker_megatron.platform import megatron_fixes
from chatbaker_megatron.platform.compat import (
    CHECKED_MEGATRON_VERSIONS,
    CUDA_TYPE_NAME_MODULES,
    PATCHES,
    TORCH_PROXY_MODULES,
    CompatPatch,
    applied_patches,
    apply_megatron_cpu_compat,
    check_megatron_version,
)
from chatbaker_megatron.platform.device import (
    HOST,
    Platform,
    detect,
    local_gpu_count,
    megatron_config_overrides,
)


def prepare_megatron() -> Platform:
    """Everything megatron-core needs before use in this process; returns the platform.

    The fixes every device needs, then (without CUDA) the CPU compat layer.
    """
    megatron_fixes.apply()
    apply_megatron_cpu_compat()
    return detect()


__all__ = [
    "CHECKED_MEGATRON_VERSIONS",
    "CUDA_TYPE_NAME_MODULES",
    "HOST",
    "PATCHES",
    "TORCH_PROXY_MODULES",
    "CompatPatch",
    "Platform",
    "applied_patches",
    "apply_megatron_cpu_compat",
    "check_megatron_version",
    "detect",
    "local_gpu_count",
    "megatron_config_overrides",
    "prepare_megatron",
]
