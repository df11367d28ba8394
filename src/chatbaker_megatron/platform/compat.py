"""megatron-core on CPU: the compat layer.

megatron-core 0.19 assumes CUDA in a handful of places (torch.cuda calls,
device="cuda" allocations, Tensor.cuda(), CUDA type-name checks, the CUDA RNG
state). `apply(device)` maps exactly those to the platform's CPU device, so
that megatron's own layers, schedules, DDP and optimizers (the code the GPU
path runs) run on CPU.

The layer
- is applied by `platform.prepare_megatron()` only when the platform has no
  CUDA, and imports nothing else of the project;
- refuses to run on a megatron-core version it was not checked against;
- is scoped: it swaps the `torch` global of the listed megatron modules for a
  proxy (their other callers see real torch), and two Tensor methods behave
  differently only when called from megatron code;
- is the list `PATCHES` of `CompatPatch` objects, each owning its targets,
  its reason, its `check()` (does the target still look the way it did when
  the patch was written?) and its `apply()`; a test holds the table in
  docs/architecture.md to the same objects.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# megatron-core "major.minor" versions every patch below was checked against.
CHECKED_MEGATRON_VERSIONS = ("0.19",)

# Modules whose `torch` global is replaced by `_CpuTorch` on CPU: each calls
# torch.cuda.* (current_device, synchronize, RNG state) or allocates with
# device="cuda" on a path the CPU run takes.
TORCH_PROXY_MODULES = (
    "megatron.core.utils",
    "megatron.core.parallel_state",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.data",
    "megatron.core.tensor_parallel.utils",
    "megatron.core.tensor_parallel.random",
    "megatron.core.tensor_parallel.cross_entropy",
    "megatron.core.transformer.module",
    "megatron.core.transformer.attention",
    "megatron.core.transformer.transformer_layer",
    "megatron.core.transformer.transformer_block",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.models.common.language_module.language_module",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.optimizer_param_scheduler",
    "megatron.core.rerun_state_machine",
    "megatron.core.dist_checkpointing.tensor_aware_state_dict",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.strategies.fully_parallel",
    "megatron.core.dist_checkpointing.strategies.async_utils",
)

# Modules whose `param.type() == 'torch.cuda.FloatTensor'`-style checks must
# see CUDA type names for CPU tensors.
CUDA_TYPE_NAME_MODULES = (
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
)
_RNG_MODULE = "megatron.core.tensor_parallel.random"

_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}
_FACTORIES = (
    "empty",
    "zeros",
    "ones",
    "full",
    "tensor",
    "as_tensor",
    "arange",
    "rand",
    "randn",
    "randint",
    "empty_like",
    "zeros_like",
    "ones_like",
    "full_like",
)


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare int means "that CUDA device" to torch factories.
    return isinstance(device, int) and not isinstance(device, bool)


class _InertEvent:
    """Stands in for torch.cuda.Event: CPU work is synchronous, so events are always done."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait(self, *args: Any, **kwargs: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: _InertEvent) -> float:
        return 0.0


class _CpuCuda(types.SimpleNamespace):
    """The torch.cuda functions megatron calls, answered for a CPU process.

    Anything not listed falls through to the real torch.cuda (e.g.
    is_available() keeps answering False).
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


def _make_cpu_cuda(device: torch.device) -> _CpuCuda:
    random_ns = types.SimpleNamespace(
        get_rng_state=lambda device="cuda": torch.get_rng_state(),
        set_rng_state=lambda new_state, device="cuda": torch.set_rng_state(new_state),
    )
    return _CpuCuda(
        current_device=lambda: device,
        synchronize=lambda device=None: None,
        get_rng_state=lambda device="cuda": torch.get_rng_state(),
        set_rng_state=lambda new_state, device="cuda": torch.set_rng_state(new_state),
        manual_seed=lambda seed: torch.manual_seed(seed),
        manual_seed_all=lambda seed: torch.manual_seed(seed),
        random=random_ns,
        Event=_InertEvent,
        current_stream=lambda device=None: None,
        default_stream=lambda device=None: None,
        stream=lambda stream=None: contextlib.nullcontext(),
        memory_allocated=lambda device=None: 0,
        max_memory_allocated=lambda device=None: 0,
        reset_peak_memory_stats=lambda device=None: None,
        empty_cache=lambda: None,
    )


class _CpuTorch(types.ModuleType):
    """`torch` as the patched megatron modules see it on CPU: "cuda" means `device`."""

    def __init__(self, device: torch.device) -> None:
        super().__init__("torch")
        self._target = device
        self.cuda = _make_cpu_cuda(device)
        self.device = self._device
        for name in _FACTORIES:
            setattr(self, name, self._factory(getattr(torch, name)))

    def _device(self, *args: Any, **kwargs: Any) -> torch.device:
        if args and isinstance(args[0], int) and not isinstance(args[0], bool):
            return self._target
        device = torch.device(*args, **kwargs)
        return self._target if device.type == "cuda" else device

    def _factory(self, fn: Any) -> Any:
        def on_platform_device(*args: Any, **kwargs: Any) -> Any:
            if "device" in kwargs and _is_cuda_device(kwargs["device"]):
                kwargs["device"] = self._target
            return fn(*args, **kwargs)

        on_platform_device.__name__ = fn.__name__
        return on_platform_device

    def __getattr__(self, name: str) -> Any:
        value = getattr(torch, name)
        # Cache, so later lookups are plain attribute reads.
        setattr(self, name, value)
        return value


def _caller_module(depth: int = 2) -> str:
    return sys._getframe(depth).f_globals.get("__name__", "")


@dataclass(frozen=True)
class CompatPatch:
    """One CUDA assumption of megatron-core mapped to the CPU platform."""

    name: str
    targets: tuple[str, ...]
    why: str
    check: Callable[[], None]  # raises if a target no longer looks as it did when checked
    apply: Callable[[torch.device], None]


def _check_binds_torch(modules: tuple[str, ...]) -> Callable[[], None]:
    def check() -> None:
        for module_name in modules:
            if getattr(importlib.import_module(module_name), "torch", None) is not torch:
                raise RuntimeError(
                    f"{module_name} no longer binds the global name `torch` to the torch "
                    "module; the CPU compat layer's assumptions do not hold for this megatron-core"
                )

    return check


def _check_attributes(owner: Callable[[], Any], *names: str) -> Callable[[], None]:
    def check() -> None:
        target = owner()
        missing = [name for name in names if not hasattr(target, name)]
        if missing:
            raise RuntimeError(
                f"{target!r} has no {', '.join(missing)}: the CPU compat layer was written "
                "against another megatron-core/torch"
            )

    return check


def _proxy_torch(device: torch.device) -> None:
    proxy = _CpuTorch(device)
    for module_name in TORCH_PROXY_MODULES:
        # Any: a module patched here; ModuleType types no attribute assignment.
        module: Any = importlib.import_module(module_name)
        module.torch = proxy


def _tensor_cuda_in_megatron(device: torch.device) -> None:
    original = torch.Tensor.cuda

    def cuda(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if _caller_module().startswith("megatron."):
            return self.to(device)
        return original(self, *args, **kwargs)

    # Patched on purpose (torch types it as TensorBase's method).
    torch.Tensor.cuda = cuda  # type: ignore[method-assign, assignment]


def _cuda_type_names(device: torch.device) -> None:
    original = torch.Tensor.type

    def type_(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        name = original(self, *args, **kwargs)
        if not args and not kwargs and _caller_module() in CUDA_TYPE_NAME_MODULES:
            return _CUDA_TYPE_NAMES.get(name, name)
        return name

    # Patched on purpose (torch types it as TensorBase's overloaded method).
    torch.Tensor.type = type_  # type: ignore[method-assign, assignment]


def _cpu_rng_state(device: torch.device) -> None:
    # Any: a module patched here; ModuleType types no attribute assignment.
    rng: Any = importlib.import_module(_RNG_MODULE)
    rng._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: (
        torch.get_rng_state()
    )
    rng._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(
        new_state
    )


PATCHES = (
    CompatPatch(
        "torch.cuda namespace",
        TORCH_PROXY_MODULES,
        "current_device() -> the platform device, synchronize() -> no-op, get/set_rng_state "
        "and manual_seed -> the CPU generator, Event/Stream -> inert stand-ins",
        _check_binds_torch(TORCH_PROXY_MODULES),
        _proxy_torch,
    ),
    CompatPatch(
        "device='cuda' allocations",
        TORCH_PROXY_MODULES,
        "torch.empty/zeros/ones/full/tensor/arange/... and torch.device called with a CUDA "
        "device allocate on the platform device (the same proxy as above)",
        _check_binds_torch(TORCH_PROXY_MODULES),
        lambda device: None,
    ),
    CompatPatch(
        "Tensor.cuda()",
        ("megatron.*",),
        "moves the tensor to the platform device (on the host: the tensor itself) when called "
        "from megatron code",
        _check_attributes(lambda: torch.Tensor, "cuda"),
        _tensor_cuda_in_megatron,
    ),
    CompatPatch(
        "Tensor.type() names",
        CUDA_TYPE_NAME_MODULES,
        "reports 'torch.cuda.FloatTensor' (Half, BFloat16) for CPU tensors, so the fp32/fp16 "
        "param grouping of the optimizers and the grad-clipping asserts accept CPU params",
        _check_binds_torch(CUDA_TYPE_NAME_MODULES),
        _cuda_type_names,
    ),
    CompatPatch(
        "CUDA RNG state functions",
        (_RNG_MODULE,),
        "_get_cuda_rng_state/_set_cuda_rng_state read and write the CPU generator, so the RNG "
        "tracker forks (dropout, TP weight init) work",
        _check_attributes(
            lambda: importlib.import_module(_RNG_MODULE),
            "_get_cuda_rng_state",
            "_set_cuda_rng_state",
        ),
        _cpu_rng_state,
    ),
)

_applied: list[str] = []


def applied_patches() -> list[str]:
    """Names of the patches applied in this process (empty on a CUDA platform)."""
    return list(_applied)


def check_megatron_version() -> str:
    """The installed megatron-core version; raises if the compat layer was not checked on it."""
    from megatron.core import package_info

    version = package_info.__version__
    major_minor = ".".join(version.split(".")[:2])
    if major_minor not in CHECKED_MEGATRON_VERSIONS:
        raise RuntimeError(
            f"megatron-core {version} is installed, but the CPU compat layer in "
            f"chatbaker_megatron/platform/compat.py was checked only against "
            f"{', '.join(v + '.x' for v in CHECKED_MEGATRON_VERSIONS)}. Pin megatron-core to a "
            f"checked version (constraints.txt) or re-check every patch in PATCHES and add "
            f"{major_minor} to CHECKED_MEGATRON_VERSIONS."
        )
    return version


def apply(device: torch.device) -> list[str]:
    """Make megatron-core run on `device`, a CPU device; idempotent.

    Returns the names of the patches applied in this process.
    """
    if device.type != "cpu":
        raise ValueError(f"the CPU compat layer maps CUDA onto a CPU device, not {device}")
    if _applied:
        return applied_patches()
    check_megatron_version()
    for patch in PATCHES:
        patch.check()
    for patch in PATCHES:
        patch.apply(device)
    _applied.extend(patch.name for patch in PATCHES)
    return applied_patches()
