"""scripts/gpu-check.sh and the wheel set of `make gpu-wheels` (docs/gpu.md), without a GPU.

The check itself needs a GPU; here: it refuses at once without one, its
report carries every step's verdict, its training overrides compose, and the
wheel set plus a bare torch is enough to import the project and compose a
config (the GPU machine has no network and no megatron-core / hydra).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from chatbaker_megatron.config.compose import compose
from tests.support.scratch_install import ROOT, install, scratch_python


def _load_driver():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gpu_check = _load_driver()


@pytest.mark.skipif(
    subprocess.run("nvidia-smi -L", shell=True, capture_output=True).returncode == 0,
    reason="this machine has a GPU",
)
def test_refuses_at_once_without_a_gpu(tmp_path):
    start = time.monotonic()
    done = subprocess.run(
        [ROOT / "scripts" / "gpu-check.sh", "--out", tmp_path],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "no NVIDIA GPU on this machine" in done.stderr
    assert time.monotonic() - start < 5
    assert not list(tmp_path.iterdir())


def _fake_context(tmp_path: Path):
    return gpu_check.Context(
        out=tmp_path / "out",
        work=tmp_path / "work",
        wheels=tmp_path / "wheels",
        python=sys.executable,
        device={"name": "NVIDIA H200", "count": 1},
        deadline=time.monotonic() + 60,
    )


def test_report_has_every_steps_verdict(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("a bug in the check")

    steps = [
        ("install", 5, lambda ctx: gpu_check.StepResult(reason="4 wheels")),
        ("kernel-tests", 5, lambda ctx: gpu_check.skipped("no nvcc")),
        ("kernel-bench", 5, broken),
        (
            "train-tiny",
            5,
            lambda ctx: gpu_check.StepResult(
                verdict="fail",
                reason="max |GPU - CPU| loss 0.2 | too far",
                figures={"max loss diff": "0.2000"},
                details="iter  CPU loss  GPU loss",
                log_tail="last line of the log",
            ),
        ),
        ("hf", 5, lambda ctx: gpu_check.StepResult(figures={"text": "대한민국은 ..."})),
    ]
    monkeypatch.setattr(gpu_check, "STEPS", steps)
    ctx = _fake_context(tmp_path)
    results = gpu_check.run_steps(ctx, [name for name, _, _ in steps])

    assert [r.verdict for r in results] == ["pass", "skipped", "fail", "fail", "pass"]
    record = json.loads((ctx.out / "gpu-check.json").read_text(encoding="utf-8"))
    assert record["summary"] == {"pass": 2, "fail": 2, "skipped": 1}
    assert record["device"]["name"] == "NVIDIA H200"
    by_name = {step["name"]: step for step in record["steps"]}
    assert list(by_name) == [name for name, _, _ in steps]
    assert "RuntimeError: a bug in the check" in by_name["kernel-bench"]["log_tail"]
    assert by_name["train-tiny"]["figures"] == {"max loss diff": "0.2000"}
    assert all(step["duration_s"] >= 0 and step["reason"] is not None for step in record["steps"])

    report = (ctx.out / "gpu-check.md").read_text(encoding="utf-8")
    assert "2 passed, 2 failed, 1 skipped" in report
    for name, verdict in zip(by_name, ["PASS", "SKIPPED", "FAIL", "FAIL", "PASS"], strict=True):
        assert f"| {name} | {verdict} |" in report
        assert f"## {name}: {verdict}" in report
    assert "loss 0.2 \\| too far" in report  # a | in a reason does not break the table
    assert "last line of the log" in report and "대한민국은 ..." in report


def test_a_failed_install_skips_the_rest_and_a_spent_budget_skips_steps(tmp_path, monkeypatch):
    steps = [
        ("install", 5, lambda ctx: gpu_check.StepResult(verdict="fail", reason="no wheels")),
        ("hf", 5, lambda ctx: gpu_check.StepResult()),
    ]
    monkeypatch.setattr(gpu_check, "STEPS", steps)
    results = gpu_check.run_steps(_fake_context(tmp_path), ["install", "hf"])
    assert [(r.verdict, r.reason) for r in results] == [
        ("fail", "no wheels"),
        ("skipped", "the install step failed"),
    ]

    ctx = _fake_context(tmp_path)
    ctx.deadline = time.monotonic()
    (result,) = gpu_check.run_steps(ctx, ["install"])
    assert result.verdict == "skipped" and "budget is spent" in result.reason


def test_one_gpu_budgets_fit_the_total_and_pythonpath_is_prepended(tmp_path, monkeypatch):
    one_gpu = [budget for name, budget, _ in gpu_check.STEPS if name != "parallel-nccl"]
    assert sum(one_gpu) <= gpu_check.TOTAL_BUDGET_S

    monkeypatch.setenv("PYTHONPATH", "/machine/packages")
    ctx = _fake_context(tmp_path)
    assert ctx.env()["PYTHONPATH"] == f"{ctx.site}{os.pathsep}/machine/packages"


def test_kernel_bench_starts_as_the_check_starts_it(tmp_path):
    """Started exactly as the step starts it (PYTHONPATH = the install alone), the
    benchmark imports (its `tests.support` helper included) and says there is no GPU."""
    ctx = _fake_context(tmp_path)
    ctx.step_deadline = time.monotonic() + 120
    outcome = ctx.run("kernel-bench", gpu_check.kernel_bench_command(ctx, tmp_path / "k.json"))
    log = outcome.log.read_text(encoding="utf-8")
    assert outcome.ok, log[-2000:]
    assert "needs a CUDA GPU and found none" in log


def test_a_second_run_starts_from_empty_folders(tmp_path, monkeypatch):
    ctx = _fake_context(tmp_path)
    old = ctx.work / "tiny-gpu" / "checkpoints"
    old.mkdir(parents=True)
    (old / "latest").write_text("30")
    assert not ctx.fresh("tiny-gpu").exists()

    (old).mkdir(parents=True)
    (old / "latest").write_text("30")
    monkeypatch.setattr(gpu_check, "STEPS", [("hf", 5, gpu_check.step_hf)])
    (result,) = gpu_check.run_steps(ctx, ["hf"])  # train-tiny did not run in this run
    assert result.verdict == "skipped" and "this run's" in result.reason


def test_cuda_extension_needs_nvcc_of_torchs_major_version(tmp_path):
    assert "CUDA_HOME is None" in gpu_check.toolkit_problem(None, "13.0")
    assert "has no bin/nvcc" in gpu_check.toolkit_problem(str(tmp_path), "13.0")
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.8, V12.8.93'\n")
    nvcc.chmod(0o755)
    assert gpu_check.toolkit_problem(str(tmp_path), "13.0") == (
        "nvcc is CUDA 12.8, torch is built for CUDA 13.0"
    )
    assert gpu_check.toolkit_problem(str(tmp_path), "12.6") is None


# A stand-in for `nvidia-smi --query-compute-apps=pid`: the live pids listed in a file.
FAKE_NVIDIA_SMI = """#!{python}
import os, sys
from pathlib import Path
for word in Path(os.environ["FAKE_GPU_PIDS"]).read_text().split():
    try:
        stat = Path(f"/proc/{{word}}/stat").read_text()
    except OSError:
        continue
    if stat[stat.rindex(")") + 2] != "Z":
        print(word)
"""

# What a step's command does on the GPU machine: torchrun in a process group of its
# own (which coreutils `timeout` does not signal) registers on the GPU, and the
# command outlives its budget. ESCAPE=1: a process that leaves the session too.
TORCHRUN_LIKE = """
import os, subprocess, sys
kw = {"start_new_session": True} if os.environ.get("ESCAPE") else {"process_group": 0}
child = subprocess.Popen(["sleep", "300"], **kw)
with open(os.environ["FAKE_GPU_PIDS"], "a") as f:
    f.write(f"{child.pid}\\n")
subprocess.run(["sleep", "300"])
"""


@pytest.mark.parametrize("escape", [False, True])
def test_a_step_leaves_no_process_on_the_gpu(tmp_path, monkeypatch, escape):
    bin_dir, pids = tmp_path / "bin", tmp_path / "gpu-pids"
    bin_dir.mkdir()
    pids.write_text("")
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_NVIDIA_SMI.format(python=sys.executable))
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GPU_PIDS", str(pids))
    monkeypatch.setenv("ESCAPE", "1" if escape else "")

    def torchrun_step(ctx):
        outcome = ctx.run("train", [sys.executable, "-c", TORCHRUN_LIKE])
        return gpu_check.fail(outcome, "the run") if not outcome.ok else gpu_check.StepResult()

    monkeypatch.setattr(gpu_check, "STEPS", [("train-tiny", 2, torchrun_step)])
    (result,) = gpu_check.run_steps(_fake_context(tmp_path), ["train-tiny"])

    (pid,) = map(int, pids.read_text().split())
    assert not gpu_check._alive(pid)
    assert gpu_check.gpu_pids() == set()
    assert result.verdict == "fail" and "timed out" in result.reason
    # Caught by the session sweep, or else by the GPU check before the next step.
    assert (f"processes [{pid}] were still on the GPU" in result.reason) == escape


def test_loss_table_and_throughput_figures():
    table, worst = gpu_check.loss_table({1: 8.3, 2: 8.0, 3: 7.5}, {1: 8.3, 2: 8.01, 3: 7.47})
    assert worst == pytest.approx(0.03)
    assert table.splitlines()[2].split() == ["2", "8.0000", "8.0100", "+0.0100"]

    records = [
        {"iteration": i, "tokens_per_s": 1000.0 * i, "tflops_per_device": 100.0 + i,
         "mfu": 0.1 * i, "memory_gib": 10.0 + i, "loss": 9.0 - i}
        for i in range(1, 8)
    ]  # fmt: skip
    records.append({"iteration": 7, "valid_loss": 5.0})
    figures = gpu_check.throughput(records)
    assert figures["tokens/s"] == "5,500"  # median over iterations 4-7 (after the warm-up)
    assert figures["MFU"] == "55.0%"
    assert figures["memory GiB"] == "17.0"


def test_the_training_overrides_compose(tmp_path):
    """A typo in a key the check passes to `chatbaker train` fails here, not on the GPU."""
    ckpt = tmp_path / "seed" / "checkpoints"
    for device in ("cpu", "gpu"):
        cfg = compose(gpu_check.tiny_overrides(tmp_path / device, tmp_path, device, ckpt))
        assert cfg.cluster.devices_per_node == 1
        assert cfg.cluster.precision == "fp32"
        assert cfg.train.train_iters == gpu_check.TINY_ITERS
    assert compose(gpu_check.tiny_overrides(tmp_path, tmp_path, "cpu", None)).train.train_iters == 0
    cfg = compose(gpu_check.wide_overrides(tmp_path, tmp_path, "triton", (989.0, 4800.0)))
    assert (cfg.model.hidden_size, cfg.model.num_attention_heads, cfg.model.num_layers) == (
        2048,
        32,
        2,
    )
    assert cfg.cluster.name == "gpu_1" and cfg.cluster.precision == "bf16"
    assert cfg.cluster.device.peak_tflops == 989.0
    assert cfg.model.kernels.attention == cfg.model.kernels.norm == "triton"


# What the GPU machine has (docs/gpu.md); the test gives a scratch install only these.
GPU_MACHINE_PACKAGES = [
    "torch", "triton", "transformers", "tokenizers", "safetensors", "numpy", "pyyaml",
    "rich", "tqdm", "psutil", "pytest",
]  # fmt: skip


def _with_requirements(names: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions of `names` and of everything they require."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            found[name] = dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement for another platform
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(found.values())


def _bare_machine(path: Path) -> Path:
    """A site folder of symlinks to this venv's copies of the GPU machine's packages."""
    path.mkdir()
    for dist in _with_requirements(GPU_MACHINE_PACKAGES):
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (path / top).exists():
                (path / top).symlink_to(source)
    return path


@pytest.mark.slow  # downloads from PyPI and builds the project: 1-5 minutes
def test_wheel_set_imports_the_project_next_to_a_bare_torch(tmp_path):
    """`make gpu-wheels` (PyPI) + the working tree, installed as gpu-check does, is enough
    to import the trainer and compose a config where only the machine's packages exist."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run([ROOT / "scripts" / "gpu-wheels.sh", wheels], env=env, check=True, timeout=300)
    assert {p.name.split("-")[0] for p in wheels.glob("*.whl")} == {
        "megatron_core", "hydra_core", "omegaconf", "antlr4_python3_runtime",
    }  # fmt: skip
    assert sum(p.stat().st_size for p in wheels.iterdir()) < 4e6

    install(site, *wheels.glob("*.whl"))
    install(site, ROOT)
    assert not (site / "torch").exists()

    # The scratch install and the bare machine are all there is.
    path = [site, _bare_machine(tmp_path / "machine")]
    probe = (
        "import chatbaker_megatron, chatbaker_megatron.training.trainer, "
        "chatbaker_megatron.convert.export_hf, chatbaker_megatron.inference.generate_cli, "
        "megatron.core\n"
        f"assert chatbaker_megatron.__file__.startswith({str(site)!r})\n"
        "from chatbaker_megatron.config.compose import compose\n"
        "print(compose(['cluster=gpu_1', 'model=1.3b']).cluster.name)\n"
    )
    done = scratch_python(path, "-c", probe, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "gpu_1"

    job = scratch_python(path, "-m", "chatbaker_megatron.train", "--cfg", "job", cwd=tmp_path)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "hidden_size:" in job.stdout
