"""The one place that knows CPU vs CUDA.

device.py          the `Platform` (compute device, collective device per process
                   group, RNG state, process groups) from `detect()`
compat.py          the layer that lets megatron-core's own code run on CPU, applied
                   by `prepare_megatron()` on the CPU path only
megatron_fixes.py  megatron-core bugs fixed on every device
lifetime.py        helper processes killed with the rank that started them
preflight.py       the GPU pre-flight: slow GPUs and links named before training

Nothing else in the code base calls torch.cuda or names a backend.
"""

from __future__ import annotations

from chatbaker_megatron.platform import compat, megatron_fixes
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
    plat = detect()
    if not plat.is_cuda:
        compat.apply(plat.device)
    return plat


__all__ = [
    "HOST",
    "Platform",
    "detect",
    "local_gpu_count",
    "megatron_config_overrides",
    "prepare_megatron",
]
