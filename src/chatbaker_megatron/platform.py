"""The one place that knows CPU vs CUDA.

`detect()` says which device and collective backend a process uses (CUDA +
NCCL when a GPU is present, CPU + gloo otherwise). `apply_megatron_cpu_compat()`
lets megatron-core's own code (the same layers, schedules, DDP, optimizers
the GPU path runs) run on CPU: megatron-core 0.19 assumes CUDA in a handful of
places and this layer maps exactly those to CPU. Nothing else in the code
base branches on the device.

The compat layer
- is applied only when CUDA is absent (`apply_megatron_cpu_compat` returns
  without touching anything when `torch.cuda.is_available()`);
- refuses to run on a megatron-core version it was not checked against,
  rather than mis-patching silently;
- is scoped: it swaps the `torch` global of the listed megatron modules for a
  proxy (their other callers see real torch), and two Tensor methods behave
  differently only when called from megatron code.

Every patch, and the megatron-core versions it was checked against, is
listed in `PATCHES` (and in docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from typing import Any

import torch

# megatron-core "major.minor" versions every patch below was checked against.
CHECKED_MEGATRON_VERSIONS = ("0.19",)


@dataclass(frozen=True)
class Platform:
    """Where this process computes and how it talks to the others."""

    device: torch.device
    backend: str  # torch.distributed backend: "nccl" or "gloo"

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def memory_gib() -> float:
    """Memory this process holds: peak CUDA allocation on GPU, resident set size on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def megatron_config_overrides() -> dict[str, Any]:
    """TransformerConfig settings that depend on this machine.

    CPU (gloo): gloo matches point-to-point messages between two ranks
    strictly in posting order, and megatron's batched p2p posts [send_prev,
    recv_prev, send_next, recv_next] on every rank: with two pipeline ranks
    (prev == next) an activation and a gradient then cross. The unbatched
    path orders sends and receives by rank parity, which gloo matches.

    CUDA: megatron's fused SwiGLU (jit) keeps fewer activation bytes and
    saves a few % of layer time; its fused RoPE needs Transformer Engine
    (docs/kernels.md has the estimate). On CPU both stay off: the jit
    compile costs more than it saves, and plain ops keep the CPU and
    reference numerics identical.
    """
    if detect().backend == "gloo":
        return {"batch_p2p_comm": False}
    return {
        "bias_activation_fusion": True,
        "apply_rope_fusion": importlib.util.find_spec("transformer_engine") is not None,
    }


def detect() -> Platform:
    """CUDA + NCCL on the process's local GPU when CUDA is available, else CPU + gloo."""
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return Platform(torch.device("cuda", local_rank % torch.cuda.device_count()), "nccl")
    return Platform(torch.device("cpu"), "gloo")


@dataclass(frozen=True)
class Patch:
    name: str
    targets: tuple[str, ...]
    why: str


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

PATCHES = (
    Patch(
        "torch.cuda namespace",
        TORCH_PROXY_MODULES,
        "current_device() -> cpu, synchronize() -> no-op, get/set_rng_state and manual_seed "
        "-> the CPU generator, Event/Stream -> inert stand-ins",
    ),
    Patch(
        "device='cuda' allocations",
        TORCH_PROXY_MODULES,
        "torch.empty/zeros/ones/full/tensor/arange/... and torch.device called with a CUDA "
        "device allocate on CPU",
    ),
    Patch(
        "Tensor.cuda()",
        ("megatron.*",),
        "returns the tensor itself when called from megatron code",
    ),
    Patch(
        "Tensor.type() names",
        CUDA_TYPE_NAME_MODULES,
        "reports 'torch.cuda.FloatTensor' (Half, BFloat16) for CPU tensors, so the fp32/fp16 "
        "param grouping of the optimizers and the grad-clipping asserts accept CPU params",
    ),
    Patch(
        "CUDA RNG state functions",
        ("megatron.core.tensor_parallel.random",),
        "_get_cuda_rng_state/_set_cuda_rng_state read and write the CPU generator, so the RNG "
        "tracker forks (dropout, TP weight init) work",
    ),
    Patch(
        "torch-Adam step on reshardable load",
        ("megatron.core.optimizer.distrib_optimizer",),
        "without apex/TE the DistributedOptimizer runs torch.optim.Adam, whose per-parameter "
        "state holds a 'step' tensor; loading a fully_reshardable checkpoint then looks that "
        "key up in the saved per-parameter tensors, where megatron never stores it (the step "
        "is restored from the param groups first): the lookup is skipped. megatron also gives "
        "every parameter the same step tensor, which torch's Adam then increments once per "
        "parameter: each parameter gets its own copy after the load",
    ),
)

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


def _cpu_device(device: Any) -> Any:
    return torch.device("cpu") if _is_cuda_device(device) else device


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


def _make_cpu_cuda() -> _CpuCuda:
    random_ns = types.SimpleNamespace(
        get_rng_state=lambda device="cuda": torch.get_rng_state(),
        set_rng_state=lambda new_state, device="cuda": torch.set_rng_state(new_state),
    )
    return _CpuCuda(
        current_device=lambda: torch.device("cpu"),
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
    """`torch` as the patched megatron modules see it on CPU (see PATCHES)."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.cuda = _make_cpu_cuda()
        self.device = self._device
        for name in _FACTORIES:
            setattr(self, name, self._factory(getattr(torch, name)))

    @staticmethod
    def _device(*args: Any, **kwargs: Any) -> torch.device:
        device = torch.device(*args, **kwargs) if not (args and isinstance(args[0], int)) else None
        if device is None or device.type == "cuda":
            return torch.device("cpu")
        return device

    @staticmethod
    def _factory(fn: Any) -> Any:
        def on_cpu(*args: Any, **kwargs: Any) -> Any:
            if "device" in kwargs:
                kwargs["device"] = _cpu_device(kwargs["device"])
            return fn(*args, **kwargs)

        on_cpu.__name__ = fn.__name__
        return on_cpu

    def __getattr__(self, name: str) -> Any:
        value = getattr(torch, name)
        # Cache, so later lookups are plain attribute reads.
        setattr(self, name, value)
        return value


def _caller_module(depth: int = 2) -> str:
    return sys._getframe(depth).f_globals.get("__name__", "")


_applied: list[str] = []


def applied_patches() -> list[str]:
    """Names of the patches applied in this process (empty when CUDA is present)."""
    return list(_applied)


def check_megatron_version() -> str:
    """The installed megatron-core version; raises if the compat layer was not checked on it."""
    from megatron.core import package_info

    version = package_info.__version__
    major_minor = ".".join(version.split(".")[:2])
    if major_minor not in CHECKED_MEGATRON_VERSIONS:
        raise RuntimeError(
            f"megatron-core {version} is installed, but the CPU compat layer in "
            f"chatbaker_megatron/platform.py was checked only against "
            f"{', '.join(v + '.x' for v in CHECKED_MEGATRON_VERSIONS)}. Pin megatron-core to a "
            f"checked version (constraints.txt) or re-check every patch in PATCHES and add "
            f"{major_minor} to CHECKED_MEGATRON_VERSIONS."
        )
    return version


def apply_megatron_cpu_compat() -> list[str]:
    """Make megatron-core run on CPU. No-op when CUDA is available; idempotent.

    Returns the names of the patches applied in this process.
    """
    if torch.cuda.is_available() or _applied:
        return applied_patches()
    check_megatron_version()

    proxy = _CpuTorch()
    for module_name in TORCH_PROXY_MODULES:
        module = importlib.import_module(module_name)
        if getattr(module, "torch", None) is not torch:
            raise RuntimeError(
                f"{module_name} no longer binds the global name `torch` to the torch module; "
                "the CPU compat layer's assumptions do not hold for this megatron-core"
            )
        module.torch = proxy

    original_cuda = torch.Tensor.cuda
    original_type = torch.Tensor.type

    def cuda(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if _caller_module().startswith("megatron."):
            return self
        return original_cuda(self, *args, **kwargs)

    def type_(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        name = original_type(self, *args, **kwargs)
        if not args and not kwargs and _caller_module() in CUDA_TYPE_NAME_MODULES:
            return _CUDA_TYPE_NAMES.get(name, name)
        return name

    torch.Tensor.cuda = cuda
    torch.Tensor.type = type_

    rng = importlib.import_module("megatron.core.tensor_parallel.random")
    rng._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: (
        torch.get_rng_state()
    )
    rng._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(
        new_state
    )

    dist_opt = importlib.import_module("megatron.core.optimizer.distrib_optimizer")
    set_states = dist_opt.DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states_keeping_step(self: Any, model_param: Any, tensors: dict) -> None:
        # A non-tensor entry is skipped by megatron's copy loop.
        set_states(self, model_param, {"step": None, **tensors})

    dist_opt.DistributedOptimizer._set_main_param_and_optimizer_states = set_states_keeping_step
    load_state_dict = dist_opt.DistributedOptimizer.load_state_dict

    def load_state_dict_unsharing_step(self: Any, state_dict: dict) -> None:
        load_state_dict(self, state_dict)
        for param_state in self.optimizer.state.values():
            if isinstance(param_state.get("step"), torch.Tensor):
                param_state["step"] = param_state["step"].clone()

    dist_opt.DistributedOptimizer.load_state_dict = load_state_dict_unsharing_step

    _applied.extend(patch.name for patch in PATCHES)
    return applied_patches()
