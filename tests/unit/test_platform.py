"""The CPU compat layer (chatbaker_megatron/platform/compat.py) patches exactly what PATCHES lists.

The real patching changes process-wide state (Tensor methods, megatron module
globals), so it runs in a fresh interpreter that reports what it observed; the
tests here assert on that report. The in-process tests pretend CUDA is present
(or keep the state as it is) and put every patch target back afterwards.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from chatbaker_megatron import platform
from chatbaker_megatron.platform import HOST, Platform, compat, device, megatron_fixes
from chatbaker_megatron.platform.compat import (
    CUDA_TYPE_NAME_MODULES,
    PATCHES,
    TORCH_PROXY_MODULES,
)
from tests.support import device_rules

# A megatron module that uses torch but is on no patch list: it must keep real torch.
UNLISTED_MODULE = "megatron.core.transformer.mlp"

# Runs in a fresh interpreter with CUDA hidden, applies the compat layer for
# real, and prints one JSON object describing what it observed.
CPU_PROBE = textwrap.dedent(
    """
    import importlib, json, sys
    import torch
    from chatbaker_megatron import platform
    from chatbaker_megatron.platform import compat

    def call_in(module_name, expr, **names):
        # Evaluate `expr` in code whose globals are (a copy of) the module's, so
        # the patched Tensor methods see that module as their caller.
        scope = dict(vars(importlib.import_module(module_name)), **names)
        exec(compile("__result = " + expr, "<" + module_name + ">", "exec"), scope)
        return scope["__result"]

    def raises(fn):
        try:
            fn()
        except Exception as exc:
            return type(exc).__name__
        return None

    UNLISTED = sys.argv[1]
    R = {}
    rng = importlib.import_module("megatron.core.tensor_parallel.random")
    importlib.import_module(UNLISTED)
    rng_before = (rng._get_cuda_rng_state, rng._set_cuda_rng_state)
    R["cuda_available"] = torch.cuda.is_available()
    plat = platform.prepare_megatron()
    R["device"] = str(plat.device)
    R["first"] = compat.applied_patches()

    proxies = {m: importlib.import_module(m).torch for m in compat.TORCH_PROXY_MODULES}
    proxy = proxies[compat.TORCH_PROXY_MODULES[0]]
    R["proxied"] = {m: p is not torch and isinstance(p, compat._CpuTorch) for m, p in proxies.items()}
    R["one_proxy"] = len({id(p) for p in proxies.values()}) == 1
    # Every other loaded megatron module that has a `torch` global keeps the real one.
    R["unlisted_with_proxy"] = sorted(
        name for name, mod in list(sys.modules.items())
        if name.startswith("megatron.") and name not in compat.TORCH_PROXY_MODULES
        # (isinstance: some packages have a submodule named `torch`)
        and isinstance(getattr(mod, "torch", None), compat._CpuTorch)
    )
    R["unlisted_is_real"] = importlib.import_module(UNLISTED).torch is torch
    R["n_megatron_modules"] = sum(n.startswith("megatron.") for n in sys.modules)

    # The proxy's torch.cuda and allocation patches.
    R["current_device"] = str(proxy.cuda.current_device())
    R["proxy_cuda_available"] = proxy.cuda.is_available()
    R["synchronize"] = repr(proxy.cuda.synchronize())
    R["alloc"] = {
        "zeros_cuda": str(proxy.zeros(2, device="cuda").device),
        "empty_cuda0": str(proxy.empty(3, device="cuda:0").device),
        "tensor_int": str(proxy.tensor([1.0], device=0).device),
        "ones_current": str(proxy.ones(2, device=proxy.cuda.current_device()).device),
        "arange_torch_device": str(proxy.arange(3, device=torch.device("cuda", 0)).device),
        "device_str": str(proxy.device("cuda")),
        "device_idx": str(proxy.device("cuda", 1)),
        "device_meta": str(proxy.device("meta")),
    }
    R["alloc_values"] = proxy.full((2,), 7.0, device="cuda").tolist()
    # Outside the proxied modules, torch is untouched: CUDA allocation still fails.
    R["real_zeros_cuda"] = raises(lambda: torch.zeros(2, device="cuda"))

    # Tensor.type(): CUDA names only for calls from CUDA_TYPE_NAME_MODULES.
    tensors = {
        "float32": torch.zeros(1), "float16": torch.zeros(1, dtype=torch.half),
        "bfloat16": torch.zeros(1, dtype=torch.bfloat16), "int64": torch.zeros(1, dtype=torch.long),
    }
    R["type_in_listed"] = {
        m: {k: call_in(m, "t.type()", t=t) for k, t in tensors.items()}
        for m in compat.CUDA_TYPE_NAME_MODULES
    }
    R["type_in_main"] = {k: t.type() for k, t in tensors.items()}
    R["type_in_unlisted"] = call_in(UNLISTED, "t.type()", t=tensors["float32"])
    # With a dtype argument, type() still converts (in a listed module too).
    R["type_convert"] = str(call_in(
        compat.CUDA_TYPE_NAME_MODULES[0], "t.type(torch.float64).dtype", t=tensors["float32"]
    ))

    # Tensor.cuda(): identity from megatron code, the real method elsewhere.
    t = torch.arange(3.0)
    R["cuda_identity"] = {
        m: call_in(m, "t.cuda()", t=t) is t and call_in(m, "t.cuda(non_blocking=True)", t=t) is t
        for m in (UNLISTED, "megatron.core.optimizer.optimizer")
    }
    R["cuda_outside"] = raises(lambda: t.cuda())
    # A module whose name merely starts with "megatron" is not megatron code.
    R["cuda_lookalike"] = raises(
        lambda: exec("t.cuda()", {"__name__": "megatronish", "t": t})
    )

    # CUDA RNG state functions read and write the CPU generator.
    R["rng_patched"] = (rng._get_cuda_rng_state, rng._set_cuda_rng_state) != rng_before
    torch.manual_seed(11)
    R["rng_get_is_cpu"] = torch.equal(rng._get_cuda_rng_state(), torch.get_rng_state())
    state = rng._get_cuda_rng_state()
    a = torch.rand(4)
    rng._set_cuda_rng_state(state)
    R["rng_set_replays"] = torch.equal(torch.rand(4), a)
    # The tracker (dropout/TP init) forks its own stream and leaves the default one alone.
    tracker = rng.CudaRNGStatesTracker()
    torch.manual_seed(1)
    tracker.add("model-parallel-rng", 7)
    with tracker.fork("model-parallel-rng"):
        forked = torch.rand(3)
    after = torch.rand(3)
    torch.manual_seed(7)
    R["fork_uses_own_seed"] = torch.equal(forked, torch.rand(3))
    torch.manual_seed(1)
    R["fork_keeps_default"] = torch.equal(after, torch.rand(3))

    # Idempotent: a second call changes nothing and reports the same patches.
    methods = (torch.Tensor.cuda, torch.Tensor.type, rng._get_cuda_rng_state)
    try:
        R["second"] = compat.apply(plat.device)
    except Exception as exc:  # reported to the idempotency test, not a probe crash
        R["second"] = type(exc).__name__ + ": " + str(exc)
    R["second_same_objects"] = (
        (torch.Tensor.cuda, torch.Tensor.type, rng._get_cuda_rng_state) == methods
        and all(importlib.import_module(m).torch is p for m, p in proxies.items())
    )
    R["applied_after_second"] = compat.applied_patches()
    print(json.dumps(R))
    """
)


@pytest.fixture(scope="module")
def cpu_probe() -> dict[str, Any]:
    """What the compat layer did in a fresh CPU-only interpreter."""
    # Hide any GPU so the probe takes the CPU path on a CUDA machine as well.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    # The compat layer alone: the device rules test mode would move "cuda" to cpu:0.
    env.pop(device_rules.ENV, None)
    proc = subprocess.run(
        [sys.executable, "-c", CPU_PROBE, UNLISTED_MODULE],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert proc.returncode == 0, f"probe failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def restore_patch_targets(monkeypatch: pytest.MonkeyPatch) -> list[types.ModuleType]:
    """Start from unpatched state and put every patch target back after the test.

    Another test may already have applied the compat layer in this process
    (parallel.initialize does); the in-process tests must neither see that
    nor leave anything of their own behind.
    """
    monkeypatch.setattr(compat, "_applied", [])
    modules = [importlib.import_module(name) for name in TORCH_PROXY_MODULES]
    for module in modules:
        monkeypatch.setattr(module, "torch", torch)
    # The unpatched methods are torch's C implementations, inherited from TensorBase.
    monkeypatch.setattr(torch.Tensor, "cuda", torch._C.TensorBase.cuda)
    monkeypatch.setattr(torch.Tensor, "type", torch._C.TensorBase.type)
    rng = importlib.import_module("megatron.core.tensor_parallel.random")
    for name in ("_get_cuda_rng_state", "_set_cuda_rng_state"):
        monkeypatch.setattr(rng, name, getattr(rng, name))
    return modules


def pretend_cuda(monkeypatch: pytest.MonkeyPatch, device_count: int = 2) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: device_count)


def pretend_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # So the CPU-path tests mean the same on a machine with a GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --- CUDA present: nothing is patched -------------------------------------------


def test_cuda_present_patches_nothing(restore_patch_targets, monkeypatch):
    pretend_cuda(monkeypatch)
    rng = importlib.import_module("megatron.core.tensor_parallel.random")
    rng_functions = (rng._get_cuda_rng_state, rng._set_cuda_rng_state)

    assert platform.prepare_megatron().is_cuda
    assert compat.applied_patches() == []
    for module in restore_patch_targets:
        assert module.torch is torch, f"{module.__name__} got a proxy with CUDA present"
    assert torch.Tensor.cuda is torch._C.TensorBase.cuda
    assert torch.Tensor.type is torch._C.TensorBase.type
    assert (rng._get_cuda_rng_state, rng._set_cuda_rng_state) == rng_functions


@pytest.mark.parametrize(("local_rank", "index"), [(None, 0), ("1", 1), ("3", 1)])
def test_detect_cuda(monkeypatch, local_rank, index):
    pretend_cuda(monkeypatch, device_count=2)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    plat = platform.detect()
    # LOCAL_RANK picks the GPU, wrapping around the visible devices.
    assert plat == Platform(torch.device("cuda", index), "nccl")
    assert plat.is_cuda


@pytest.fixture
def cpu_on_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A CPU platform computing on the host, as without the suite's device rules."""
    pretend_cpu(monkeypatch)
    before = platform.detect().device
    device.use_cpu_compute_device(HOST)
    yield
    device.use_cpu_compute_device(before)


def test_detect_cpu(cpu_on_host):
    plat = platform.detect()
    assert plat == Platform(torch.device("cpu"), "gloo")
    assert not plat.is_cuda


def test_cpu_compute_device_is_set_apart_from_the_host(cpu_on_host):
    compute = torch.device("cpu", 0)
    device.use_cpu_compute_device(compute)
    plat = platform.detect()
    assert plat == Platform(compute, "gloo")
    assert plat.collective_device() == compute
    host_group = type("GlooGroup", (), {})()  # stands in for a gloo process group
    device.mark_host_group(host_group)
    assert plat.collective_device(host_group) is HOST
    with pytest.raises(ValueError, match="not a CPU device"):
        device.use_cpu_compute_device(torch.device("cuda", 0))


def test_compat_layer_maps_cuda_onto_cpu_only():
    with pytest.raises(ValueError, match="onto a CPU device"):
        compat.apply(torch.device("cuda", 0))


# --- CPU: the real patches, observed in a fresh interpreter ---------------------


def test_cpu_probe_ran_on_cpu(cpu_probe):
    assert cpu_probe["cuda_available"] is False
    assert cpu_probe["device"] == "cpu"


def test_applied_patches_are_the_listed_ones(cpu_probe):
    names = [patch.name for patch in PATCHES]
    assert cpu_probe["first"] == names


def test_listed_modules_get_one_proxy(cpu_probe):
    assert cpu_probe["proxied"] == dict.fromkeys(TORCH_PROXY_MODULES, True)
    assert cpu_probe["one_proxy"]


def test_unlisted_megatron_modules_keep_real_torch(cpu_probe):
    assert cpu_probe["unlisted_is_real"]
    # The probe had imported a few hundred megatron modules; none besides the listed ones changed.
    assert cpu_probe["n_megatron_modules"] > len(TORCH_PROXY_MODULES)
    assert cpu_probe["unlisted_with_proxy"] == []


def test_proxy_cuda_namespace_answers_for_cpu(cpu_probe):
    assert cpu_probe["current_device"] == "cpu"
    assert cpu_probe["synchronize"] == "None"
    # Not in the stand-in: falls through to the real torch.cuda.
    assert cpu_probe["proxy_cuda_available"] is False


def test_proxy_cuda_allocations_land_on_cpu(cpu_probe):
    assert cpu_probe["alloc"] == {
        "zeros_cuda": "cpu",
        "empty_cuda0": "cpu",
        "tensor_int": "cpu",
        "ones_current": "cpu",
        "arange_torch_device": "cpu",
        "device_str": "cpu",
        "device_idx": "cpu",
        "device_meta": "meta",
    }
    assert cpu_probe["alloc_values"] == [7.0, 7.0]
    # The real torch, used outside the listed modules, is not patched.
    assert cpu_probe["real_zeros_cuda"] is not None


def test_tensor_type_reports_cuda_names_only_in_listed_modules(cpu_probe):
    cuda_names = {
        "float32": "torch.cuda.FloatTensor",
        "float16": "torch.cuda.HalfTensor",
        "bfloat16": "torch.cuda.BFloat16Tensor",
        # Only the optimizers' float types are renamed.
        "int64": "torch.LongTensor",
    }
    assert cpu_probe["type_in_listed"] == dict.fromkeys(CUDA_TYPE_NAME_MODULES, cuda_names)
    assert cpu_probe["type_in_main"] == {
        "float32": "torch.FloatTensor",
        "float16": "torch.HalfTensor",
        "bfloat16": "torch.BFloat16Tensor",
        "int64": "torch.LongTensor",
    }
    assert cpu_probe["type_in_unlisted"] == "torch.FloatTensor"
    assert cpu_probe["type_convert"] == "torch.float64"


def test_tensor_cuda_is_identity_only_from_megatron(cpu_probe):
    assert cpu_probe["cuda_identity"] == {
        UNLISTED_MODULE: True,
        "megatron.core.optimizer.optimizer": True,
    }
    assert cpu_probe["cuda_outside"] is not None, "Tensor.cuda() from a test module did not raise"
    assert cpu_probe["cuda_lookalike"] is not None


def test_rng_state_functions_use_cpu_generator(cpu_probe):
    assert cpu_probe["rng_patched"]
    assert cpu_probe["rng_get_is_cpu"]
    assert cpu_probe["rng_set_replays"]
    assert cpu_probe["fork_uses_own_seed"]
    assert cpu_probe["fork_keeps_default"]


def test_apply_is_idempotent(cpu_probe):
    assert cpu_probe["second"] == cpu_probe["first"]
    assert cpu_probe["second_same_objects"], "a second call re-patched"
    assert cpu_probe["applied_after_second"] == [patch.name for patch in PATCHES]


# --- megatron-core version gate -------------------------------------------------


@pytest.mark.parametrize("version", ["0.19.2", "0.19.0", "0.19.0rc1"])
def test_checked_version_passes(monkeypatch, version):
    from megatron.core import package_info

    monkeypatch.setattr(package_info, "__version__", version)
    assert compat.check_megatron_version() == version


def test_installed_version_is_checked():
    from megatron.core import package_info

    assert compat.check_megatron_version() == package_info.__version__


@pytest.mark.parametrize("version", ["0.25.0", "0.18.1", "1.19.0", "0.1.9"])
def test_unchecked_version_is_refused(monkeypatch, version):
    from megatron.core import package_info

    monkeypatch.setattr(package_info, "__version__", version)
    with pytest.raises(RuntimeError) as err:
        compat.check_megatron_version()
    message = str(err.value)
    # Names the installed version, the checked one(s), and the way out.
    assert f"megatron-core {version} is installed" in message
    assert "0.19.x" in message
    assert "CHECKED_MEGATRON_VERSIONS" in message


def test_apply_refuses_unchecked_version_before_patching(restore_patch_targets, monkeypatch):
    from megatron.core import package_info

    pretend_cpu(monkeypatch)
    monkeypatch.setattr(package_info, "__version__", "0.25.0")
    with pytest.raises(RuntimeError, match=r"megatron-core 0\.25\.0 is installed"):
        compat.apply(HOST)
    assert compat.applied_patches() == []
    assert all(module.torch is torch for module in restore_patch_targets)
    assert torch.Tensor.cuda is torch._C.TensorBase.cuda
    assert torch.Tensor.type is torch._C.TensorBase.type


# --- TransformerConfig overrides per backend ------------------------------------


def test_config_overrides_on_gloo(monkeypatch):
    from megatron.core.transformer.transformer_config import TransformerConfig

    pretend_cpu(monkeypatch)
    overrides = platform.megatron_config_overrides()
    assert overrides == {"batch_p2p_comm": False}
    # The key must be a real TransformerConfig field, or setting it would fail / do nothing.
    assert set(overrides) <= {f.name for f in dataclasses.fields(TransformerConfig)}


def test_config_overrides_on_nccl(monkeypatch):
    pretend_cuda(monkeypatch)
    assert platform.detect().backend == "nccl"
    # NCCL needs no rule; the fused ops are the kernels' business (tests/kernels/test_dispatch.py).
    assert platform.megatron_config_overrides() == {}


# --- the patch table in docs/architecture.md is the PATCHES list ------------------


def _doc_table_rows(heading: str) -> list[str]:
    """First-column entries of the table under `heading` in docs/architecture.md."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [row.split("|")[1].strip().replace("`", "") for row in rows[1:]]


def test_docs_table_lists_exactly_the_patches():
    assert _doc_table_rows("### The megatron-core CPU compat layer") == [
        patch.name.replace("`", "") for patch in PATCHES
    ]
    assert _doc_table_rows("### megatron fixes on every device") == list(megatron_fixes.FIXES)


def test_every_patch_checks_its_targets_before_applying(restore_patch_targets):
    # On this megatron-core every target still looks as it did when checked.
    for patch in PATCHES:
        patch.check()


def test_torch_adam_fix_follows_megatron_adam():
    # Without TE/apex megatron runs torch's Adam, on any device: the fix applies.
    assert megatron_fixes.uses_torch_adam() == (
        importlib.util.find_spec("transformer_engine") is None
        and importlib.util.find_spec("apex") is None
    )
    adam = [megatron_fixes.TORCH_ADAM_FIX] if megatron_fixes.uses_torch_adam() else []
    assert megatron_fixes.apply() == [
        *adam,
        megatron_fixes.RESULTS_MANAGER_FIX,
        megatron_fixes.DP_RESHARDABLE_LOAD_FIX,
    ]


def _start_results_manager_then_report_its_pid(out: str) -> None:
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    megatron_fixes.apply()
    queue = filesystem_async.get_write_results_queue()
    with open(out, "w") as f:
        f.write(str(queue._manager._process.pid))
    time.sleep(600)  # killed by the test


def test_checkpoint_results_manager_dies_with_its_rank(tmp_path):
    """kill -9 of a rank used to leave megatron's write-results Manager running for good."""
    out = tmp_path / "manager.pid"
    ctx = multiprocessing.get_context("spawn")
    rank = ctx.Process(target=_start_results_manager_then_report_its_pid, args=(str(out),))
    rank.start()
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and out.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        manager_pid = int(out.read_text())
        assert psutil.pid_exists(manager_pid)
    finally:
        rank.kill()
        rank.join()
    deadline = time.monotonic() + 30
    while _running(manager_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(manager_pid), f"the Manager (pid {manager_pid}) outlived its killed rank"


def _running(pid: int) -> bool:
    # An orphan is reaped by whatever init the machine has: a zombie counts as ended.
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_platform_collective_devices(cpu_on_host):
    plat = platform.detect()
    assert plat.collective_device() == torch.device("cpu")
    assert plat.tensor([1.0, 2.0]).tolist() == [1.0, 2.0]
    assert plat.inference_dtype == torch.float32


def test_platform_cuda_choices(monkeypatch):
    pretend_cuda(monkeypatch)
    plat = platform.detect()
    assert plat.is_cuda
    assert plat.inference_dtype == torch.bfloat16
    assert plat.collective_device() == plat.device
