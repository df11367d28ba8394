"""NCCL's device rules on CPU (tests/support/device_rules.py), and the GPU-path fixes they guard.

The suite runs with CHATBAKER_DEVICE_RULES=nccl (tests/conftest.py), in
every process it starts (tests/support/site/sitecustomize.py), so every
multi-rank test already trains, checkpoints and reads data under the rules;
these tests pin the rules themselves down on 2 gloo ranks: what is refused,
with which message, and what passes. The fp16 test checks that a training
step unscales the gradients and updates the loss scale exactly once.
"""

from __future__ import annotations

import dataclasses
import datetime
import warnings

import pytest
import torch
import torch.distributed as dist

from chatbaker_megatron import parallel, platform
from chatbaker_megatron.config.optim import OptimConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.platform import compat
from chatbaker_megatron.training.engine import build_engine
from chatbaker_megatron.training.step import train_step
from tests.support import device_rules
from tests.support.tiny_model import TINY_MODEL

pytestmark = pytest.mark.skipif(
    not device_rules.installed(), reason="the rules are a CPU test mode (real NCCL on GPU)"
)

TINY = dataclasses.replace(TINY_MODEL, num_layers=2, hidden_size=32, ffn_hidden_size=64)


def _refusal(fn) -> str | None:
    try:
        fn()
    except RuntimeError as err:
        return str(err)
    return None


def collectives_under_the_rules() -> dict:
    plat = platform.detect()
    host = torch.tensor([1.0])  # no device: the host, as on a GPU machine
    computed_on_host = host * 2 + 1  # derived from host tensors only: still the host
    compute = plat.tensor([1.0])
    moved = torch.ones(2).to(plat.device)
    host_group = plat.host_group(datetime.timedelta(minutes=1))
    on_host_group = torch.tensor([2.0])
    dist.all_reduce(on_host_group, group=host_group)
    dist.all_reduce(compute)
    dist.all_reduce(moved)
    module = plat.to_device(torch.nn.Linear(2, 2))
    objects = [None] * dist.get_world_size()
    dist.all_gather_object(objects, {"rank": dist.get_rank()})
    return {
        "host": _refusal(lambda: dist.all_reduce(host)),
        "computed_on_host": _refusal(lambda: dist.all_reduce(computed_on_host)),
        "cpu_copy": _refusal(lambda: dist.all_reduce(compute.cpu())),
        "compute": compute.item(),
        "moved": moved.tolist(),
        "host_group": on_host_group.item(),
        "module_params_on_device": not any(
            device_rules.is_host_tensor(p) for p in module.parameters()
        ),
        "module_before_move": device_rules.is_host_tensor(torch.nn.Linear(2, 2).weight),
        "objects": objects,
    }


def test_collectives_refuse_host_tensors_like_nccl(ranks):
    results = ranks.run(2, collectives_under_the_rules)
    for result in results:
        for case in ("host", "computed_on_host", "cpu_copy"):
            message = result[case]
            assert message is not None, f"{case}: a host tensor passed an NCCL-group collective"
            assert message.startswith(device_rules.NCCL_ERROR)
            assert "test_device_rules.py" in message, "the error names where the tensor was made"
        assert result["compute"] == 2.0
        assert result["moved"] == [2.0, 2.0]
        assert result["host_group"] == 4.0, "gloo host groups take host tensors"
        assert result["module_params_on_device"]
        assert result["module_before_move"], "a module built without a device is on the host"
        assert result["objects"] == [{"rank": 0}, {"rank": 1}]


def host_tensors_through_each_entry_point() -> dict:
    """Every c10d entry point that NCCL would refuse a host tensor in, on torch 2.14's spellings."""
    plat = platform.detect()
    peer = 1 - dist.get_rank()
    gathered = plat.tensor([0.0, 0.0])
    scattered = plat.tensor([0.0])

    def batch_with_host_send() -> None:
        ops = [
            dist.P2POp(dist.isend, torch.ones(1), peer),
            dist.P2POp(dist.irecv, plat.tensor([0.0]), peer),
        ]
        for work in dist.batch_isend_irecv(ops):
            work.wait()

    refusals = {
        "all_gather_into_tensor": lambda: dist.all_gather_into_tensor(gathered, torch.ones(1)),
        "_all_gather_base": lambda: dist._all_gather_base(gathered, torch.ones(1)),
        "reduce_scatter_tensor": lambda: dist.reduce_scatter_tensor(scattered, torch.ones(2)),
        "_reduce_scatter_base": lambda: dist._reduce_scatter_base(scattered, torch.ones(2)),
        "batch_isend_irecv": batch_with_host_send,
        "as_tensor": lambda: dist.all_reduce(torch.as_tensor([1.0])),
        "device_cpu": lambda: dist.all_reduce(torch.zeros(1, device=torch.device("cpu"))),
        "to_device_cpu": lambda: dist.all_reduce(plat.tensor([1.0]).to(torch.device("cpu"))),
    }
    with warnings.catch_warnings():  # torch deprecates the aliases; they still run
        warnings.simplefilter("ignore", FutureWarning)
        results = {case: _refusal(call) for case, call in refusals.items()}
    compute = plat.tensor([1.0])
    # The same calls on compute tensors go through (a tensor's `.device` is not the host).
    dist.all_gather_into_tensor(gathered, plat.tensor([float(dist.get_rank())]))
    dist.reduce_scatter_tensor(scattered, torch.ones(2, device=compute.device))
    dist.all_reduce(torch.as_tensor(compute))
    results["compute"] = gathered.tolist() + scattered.tolist() + compute.tolist()
    return results


def test_each_entry_point_refuses_host_tensors(ranks):
    for result in ranks.run(2, host_tensors_through_each_entry_point):
        assert result.pop("compute") == [0.0, 1.0, 2.0, 2.0]
        for case, message in result.items():
            assert message is not None, f"{case}: a host tensor passed an NCCL-group collective"
            assert message.startswith(device_rules.NCCL_ERROR), (case, message)
            assert "test_device_rules.py" in message, (case, message)


def engine_left_on_host_is_refused() -> str | None:
    """The model-placement bug: DDP's broadcast of parameters never moved to the device."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from chatbaker_megatron.model.llama import build_model

    parallel.initialize(ParallelConfig(), seed=1)
    (chunk,) = build_model(TINY, ParallelConfig(), vocab_size=64, max_sequence_length=16)
    ddp = DistributedDataParallel(
        config=chunk.config, ddp_config=DistributedDataParallelConfig(), module=chunk
    )
    return _refusal(ddp.broadcast_params)


def test_model_left_on_host_is_refused(ranks):
    for message in ranks.run(2, engine_left_on_host_is_refused):
        assert message is not None and message.startswith(device_rules.NCCL_ERROR)


def fp16_steps(steps: int) -> dict:
    """Count megatron's unscale and loss-scale updates over fp16 training steps."""
    from megatron.core.optimizer.optimizer import MixedPrecisionOptimizer

    parallel.initialize(ParallelConfig(), seed=1)
    engine = build_engine(
        TINY,
        ParallelConfig(),
        OptimConfig(lr=1e-3, clip_grad=1.0, warmup_iters=0, initial_loss_scale=128.0),
        vocab_size=64,
        max_sequence_length=16,
        train_iters=steps,
        global_batch_size=2,
        params_dtype=torch.float16,
    )
    calls = {"unscale": 0, "scaler_update": 0}
    unscale = MixedPrecisionOptimizer._unscale_main_grads_and_check_for_nan
    for inner in getattr(engine.optimizer, "chained_optimizers", [engine.optimizer]):
        update = inner.grad_scaler.update

        def counted_unscale(self, unscale=unscale):
            calls["unscale"] += 1
            return unscale(self)

        def counted_update(found_inf, update=update):
            calls["scaler_update"] += 1
            return update(found_inf)

        inner._unscale_main_grads_and_check_for_nan = counted_unscale.__get__(inner)
        inner.grad_scaler.update = counted_update
    plat = platform.detect()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (2, 17), generator=gen)
    batch = {
        "tokens": tokens[:, :-1],
        "labels": tokens[:, 1:],
        "loss_mask": torch.ones(2, 16),
        "position_ids": torch.arange(16).expand(2, 16),
    }
    batch = {key: plat.from_host(value.contiguous()) for key, value in batch.items()}
    results = [train_step(engine, [batch], global_batch_size=2) for _ in range(steps)]
    return {
        **calls,
        "grad_norms": [r.grad_norm for r in results],
        "updated": [r.update_successful for r in results],
        "loss_scale": float(engine.optimizer.get_loss_scale()),
    }


def test_fp16_step_unscales_once(ranks):
    (result,) = ranks.run(1, fp16_steps, 3)
    assert result["unscale"] == 3, "one unscale of the main grads per step"
    assert result["scaler_update"] == 3, "one loss-scale update per step"
    assert all(result["updated"]), result
    assert all(norm is not None and norm > 0 for norm in result["grad_norms"])


def megatron_cuda_calls() -> dict:
    """`.cuda()` as megatron calls it, through the CPU compat layer of a prepared rank."""
    cuda = eval("lambda t: t.cuda()", {"__name__": "megatron.core.utils"})
    host = torch.zeros(3)
    moved = cuda(host)
    return {
        "moved_is_compute": not device_rules.is_host_tensor(moved),
        "host_stays_host": device_rules.is_host_tensor(host),
        "copied": moved.untyped_storage().data_ptr() != host.untyped_storage().data_ptr(),
        "compute_stays": cuda(moved) is moved,
        "compat_applied": bool(compat.applied_patches()),
    }


def test_megatron_cuda_call_gives_a_compute_tensor(ranks):
    (result,) = ranks.run(1, megatron_cuda_calls)
    assert result == dict.fromkeys(result, True)


def rules_in_this_process() -> dict:
    return {"installed": device_rules.installed(), "device": str(platform.detect().device)}


def test_the_rules_reach_every_process_of_the_suite(ranks):
    """The pytest process (conftest) and the ranks forked from the worker pools' forkserver
    (tests/support/site/sitecustomize.py); torchrun ranks: tests/e2e/test_launch.py."""
    assert rules_in_this_process() == {"installed": True, "device": "cpu:0"}
    assert ranks.run(2, rules_in_this_process) == [{"installed": True, "device": "cpu:0"}] * 2
