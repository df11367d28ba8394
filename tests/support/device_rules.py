"""NCCL's device rules, enforced on CPU: the test mode that makes GPU-only bugs fail on CPU.

On a GPU run two devices exist: the host, where every tensor created without
a device lands, and the GPU, where the model computes. NCCL refuses host
tensors (`No backend type associated with device type cpu`), and a model
left on the host never reaches the GPU. On a CPU run both are the same
device, so such bugs pass every CPU test and fail on the first GPU
iteration. This mode gives the CPU run two devices again:

- the compute device becomes `SIMULATED_ACCELERATOR` (`cpu:0`): a real CPU
  device, so everything computes as usual, but one that is passed around
  explicitly (`platform.detect().device`), like `cuda:N`;
- every tensor created on the host (a factory call with no device or with
  plain `cpu`, `torch.from_numpy`, `.cpu()`) is remembered as a host tensor,
  and so is whatever is computed from host tensors alone; moving it to the
  compute device (`.to(platform.device)`, megatron's `.cuda()`) gives a
  compute tensor, and moving a compute tensor there gives the tensor itself,
  as on a GPU;
- a collective on an accelerator group (every group but the gloo groups
  opened as host groups, see `Platform.host_group` and megatron's own
  `backend="gloo"` groups) refuses a host tensor with NCCL's own error,
  naming the line that created the tensor.

`CHATBAKER_DEVICE_RULES=nccl` turns it on; it only matters without CUDA,
where real NCCL is absent. The test harness installs it in every process of
the suite: tests/conftest.py in the pytest process (and sets the variable
when there is no GPU), tests/support/site/sitecustomize.py in every Python
interpreter started from it (the forkserver, whose forked workers and
commands inherit the mode, torchrun ranks, `chatbaker` subprocesses) as it
imports the platform; only the packaging tests' `python -S` runs, which skip
site start-up and only print configs, run without it. Production
knows nothing of it: it gives the platform its compute device
(`use_cpu_compute_device`), marks megatron's gloo groups in the platform's
own list of host groups, and its tracking follows megatron's `.cuda()`
through the CPU compat layer, which moves a tensor to the platform device.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import weakref
from typing import Any

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from chatbaker_megatron.platform.device import (
    HOST,
    is_host_group,
    mark_host_group,
    use_cpu_compute_device,
)

ENV = "CHATBAKER_DEVICE_RULES"
SIMULATED_ACCELERATOR = torch.device("cpu", 0)
NCCL_ERROR = "No backend type associated with device type cpu"

# Factories whose result lands on the default (host) device unless given one.
_FACTORIES = frozenset(
    {
        torch.tensor,
        torch.as_tensor,
        torch.zeros,
        torch.ones,
        torch.empty,
        torch.full,
        torch.arange,
        torch.rand,
        torch.randn,
        torch.randint,
        torch.randperm,
        torch.linspace,
        torch.eye,
        torch.empty_strided,
        torch.scalar_tensor,
    }
)
_C10D = "torch.distributed.distributed_c10d"
# Factories that convert data: given a tensor and no device, the result stays
# where that tensor is (as on CUDA); given lists or arrays, it lands on the host.
_CONVERTERS = frozenset({torch.tensor, torch.as_tensor})

# Host storages -> where they were created (storages keep one Python object
# for their lifetime, so a weak mapping follows every view and `.data` alias).
_host_storages: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_installed: list[TorchFunctionMode] = []
_collective_names: dict[Any, str | None] = {}


def enabled() -> bool:
    """Whether this process asks for the rules (the variable set, no CUDA)."""
    return os.environ.get(ENV) == "nccl" and not torch.cuda.is_available()


def installed() -> bool:
    """Whether the rules are on in this process."""
    return bool(_installed)


def _storage(tensor: torch.Tensor) -> Any:
    """The tensor's storage, or None for tensor subclasses without one (e.g. ShardedTensor)."""
    try:
        return tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None


def _site(tensor: torch.Tensor) -> str | None:
    """Where a host tensor was created; None for a compute tensor."""
    storage = _storage(tensor)
    return None if storage is None else _host_storages.get(storage)


def is_host_tensor(tensor: torch.Tensor) -> bool:
    return _site(tensor) is not None


def _is_host_device(device: Any) -> bool:
    """Whether a factory's `device=` names the host.

    No device, the string "cpu" or `platform.HOST` do, and so does every
    `torch.device("cpu")` built while the mode runs (the mode hands out
    `HOST` itself for it). Any other torch.device object of type cpu is
    usually some tensor's `.device` ("where that tensor is", which the
    tensor's own tag already tracks), so it does not.
    """
    if device is None or device is HOST:
        return True
    return isinstance(device, str) and device == "cpu"


def _creation_site() -> str:
    """The first frame outside torch, the platform package and this mode: who created the tensor."""
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(("torch", "chatbaker_megatron.platform", __name__)):
            return f"{frame.f_code.co_filename}:{frame.f_lineno} ({module})"
        frame = frame.f_back
    return "<unknown>"


def _mark_host(result: Any, site: str) -> None:
    if isinstance(result, torch.Tensor):
        storage = _storage(result)
        if storage is not None:
            _host_storages[storage] = site
    elif isinstance(result, (tuple, list)):
        for item in result:
            _mark_host(item, site)


def _host_origin(args: tuple, kwargs: dict) -> str | None:
    """Where the host inputs came from, when every tensor input of an op is on the host."""
    site = None
    for value in (*args, *kwargs.values()):
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if not isinstance(item, torch.Tensor):
                continue
            item_site = _site(item)
            if item_site is None:
                # A compute tensor takes part: the result lives there (CUDA takes
                # 0-dim host tensors as scalars next to GPU tensors).
                return None
            site = site or item_site
    return site


def _follows_its_input(func: Any, args: tuple, kwargs: dict) -> bool:
    """torch.tensor(t) / torch.as_tensor(t) with no device: the result is where `t` is."""
    return (
        func in _CONVERTERS
        and kwargs.get("device") is None
        and isinstance(args[0] if args else kwargs.get("data"), torch.Tensor)
    )


def _device(args: tuple, kwargs: dict) -> torch.device:
    """`torch.device(...)`: a plain host device built from a string is `HOST` itself."""
    device = torch.device(*args, **kwargs)
    if device == HOST and args and isinstance(args[0], str):
        return HOST
    return device


def _target_device(func: Any, args: tuple, kwargs: dict) -> tuple[bool, Any]:
    """(moves, device) for Tensor.to / .cpu; moves is False for other functions.

    `.cpu()`, `.to("cpu")` and `.to(HOST)` go to the host; any other CPU
    torch.device (the simulated accelerator, or some tensor's `.device`,
    which in practice names where the model is) goes to the compute device.
    """
    if func is torch.Tensor.cpu:
        return True, HOST
    if func is torch.Tensor.to:
        device = kwargs.get("device", args[1] if len(args) > 1 else None)
        if device is HOST or (isinstance(device, str) and device == "cpu"):
            return True, HOST
        if isinstance(device, torch.device) and device.type == "cpu":
            return True, SIMULATED_ACCELERATOR
        if isinstance(device, str) and device == "cpu:0":
            return True, SIMULATED_ACCELERATOR
    return False, None


class DeviceRulesMode(TorchFunctionMode):
    """Tracks which tensors live on the host (see the module docstring)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        collective = _collective_name(func)
        if collective is not None:
            _check_collective(collective, inspect.unwrap(func), args, kwargs)
            return func(*args, **kwargs)
        if func is torch.device:
            return _device(args, kwargs)
        if func in _FACTORIES and not _follows_its_input(func, args, kwargs):
            result = func(*args, **kwargs)
            if _is_host_device(kwargs.get("device")):
                _mark_host(result, _creation_site())
            return result
        if func is torch.from_numpy:
            result = func(*args, **kwargs)
            _mark_host(result, _creation_site())
            return result
        moves, device = _target_device(func, args, kwargs)
        if moves:
            return _move(func, args, kwargs, device)
        if kwargs.get("device") is not None:
            # An explicit device (empty_like(t, device=...), new_zeros(..., device=...))
            # decides, whatever the inputs.
            result = func(*args, **kwargs)
            if _is_host_device(kwargs["device"]):
                _mark_host(result, _creation_site())
            return result
        result = func(*args, **kwargs)
        # Most calls are attribute reads and queries (.shape, .dim(), .item()):
        # nothing to tag, and no need to look at the inputs.
        if not isinstance(result, (torch.Tensor, tuple, list)):
            return result
        site = _host_origin(args, kwargs)
        if site is not None:
            _mark_host(result, site)
        return result


def _move(func: Any, args: tuple, kwargs: dict, device: Any) -> torch.Tensor:
    """A move as on a GPU: a copy between host and compute device (on one CPU the storage
    must differ too), the tensor itself when it is there already."""
    source = args[0]
    if device is not HOST and not is_host_tensor(source):
        # torch copies a "cpu" tensor to "cpu:0"; a GPU tensor moved to its own GPU
        # is returned as it is (converted, if the call also asks for a dtype).
        if "device" in kwargs:
            kwargs = {**kwargs, "device": source.device}
        else:
            args = (source, source.device, *args[2:])
    result = func(*args, **kwargs)
    same_storage = _storage(result) is _storage(source) is not None
    if device is HOST:
        if same_storage and not is_host_tensor(source):
            result = result.clone()
        if not is_host_tensor(result):
            _mark_host(result, _creation_site())
    elif same_storage and is_host_tensor(source):
        result = result.clone()
    return result


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dist.P2POp):
        return [value.tensor]
    return []


def _collective_name(func: Any) -> str | None:
    """The c10d collective behind `func` (itself or a wrapper of it), else None.

    Every c10d collective with tensor arguments hands itself to the active
    torch function mode, and nothing else in c10d does, so the check sits
    here, whoever the caller and whatever alias it called: on torch 2.14
    `all_gather_into_tensor` and `_all_gather_base` arrive as
    `all_gather_single`, `reduce_scatter_tensor` and `_reduce_scatter_base`
    as `reduce_scatter_single`, and `batch_isend_irecv` as its `isend`s and
    `irecv`s. No list of names, so a rename in torch cannot open a gap. The
    answer is remembered per function: the mode sees tens of thousands of
    calls per training step.
    """
    try:
        return _collective_names[func]
    except KeyError:
        name = _collective_names[func] = _find_collective_name(func)
        return name
    except TypeError:  # an unhashable callable
        return _find_collective_name(func)


def _find_collective_name(func: Any) -> str | None:
    inner = inspect.unwrap(func) if hasattr(func, "__wrapped__") else func
    if getattr(inner, "__module__", None) != _C10D:
        return None
    return getattr(inner, "__name__", None)


def _inside_object_collective() -> bool:
    """Whether torch's own object collectives (all_gather_object, ...) made this call.

    They pick their tensors' device per backend themselves (the GPU under NCCL).
    """
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(("torch", __name__)):
            return False
        if frame.f_code.co_name.endswith(("_object", "_object_list")):
            return True
        frame = frame.f_back
    return False


@functools.cache
def _signature(fn: Any) -> inspect.Signature:
    return inspect.signature(fn)


def _check_collective(name: str, fn: Any, args: tuple, kwargs: dict) -> None:
    """Refuse a host tensor on an accelerator group, as NCCL does."""
    bound = _signature(fn).bind(*args, **kwargs).arguments
    groups = [bound.get("group")]
    if any(group is not None and is_host_group(group) for group in groups):
        return
    for value in bound.values():
        for tensor in _tensors(value):
            site = _site(tensor)
            if site is not None and not _inside_object_collective():
                raise RuntimeError(
                    f"{NCCL_ERROR} (NCCL device rules: torch.distributed.{name} got a "
                    f"host tensor created at {site}; tensors for collectives on an "
                    "NCCL group must be created on platform.collective_device(group))"
                )


def _marking_gloo_groups(new_group: Any) -> Any:
    @functools.wraps(new_group)
    def new_group_marked(*args: Any, **kwargs: Any) -> Any:
        group = new_group(*args, **kwargs)
        # Ranks outside the new group get a marker (None or an int), not a group.
        if kwargs.get("backend") == "gloo" and isinstance(group, dist.ProcessGroup):
            mark_host_group(group)
        return group

    return new_group_marked


def install() -> bool:
    """Turn the rules on in this process (idempotent); False when it does not ask for them.

    Before anything computes: the platform's compute device becomes
    `SIMULATED_ACCELERATOR`, and megatron's "cuda" with it once the CPU
    compat layer is applied.
    """
    if not enabled():
        return False
    if _installed:
        return True
    use_cpu_compute_device(SIMULATED_ACCELERATOR)
    c10d = sys.modules[_C10D]
    dist.new_group = c10d.new_group = _marking_gloo_groups(c10d.new_group)
    mode = DeviceRulesMode()
    mode.__enter__()  # for the life of the process
    _installed.append(mode)
    return True
