"""One prepared check of everything that needs a GPU, for a bare machine with no network.

    scripts/gpu-check.sh [--out DIR] [--wheels DIR] [--work DIR] [--steps NAME ...]

Installs the runtime dependencies the machine lacks from the wheel set of
`make gpu-wheels` into a private target folder (never touching the machine's
torch), then runs the steps below, each under its own time budget, the whole
under TOTAL_BUDGET_S. A failing step never stops the next one; every step's
verdict, duration, key figures and log tail go to OUT/gpu-check.md and
OUT/gpu-check.json (rewritten after every step, so a killed run still leaves
a report). Full logs: OUT/logs/. Scratch (training runs, the install): --work.
docs/gpu.md describes the steps and the report.

Only the standard library here: the steps run their work in subprocesses
with the machine's Python and PYTHONPATH=<work>/site.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Under 8 minutes in all, leaving time for the install probe and the report.
TOTAL_BUDGET_S = 470
# A step that would get less than this is skipped rather than started to time out.
MIN_STEP_S = 10
LOG_TAIL_LINES = 25
TINY_ITERS = 30
WIDE_ITERS = 12
# Largest |GPU loss - CPU loss| accepted for the tiny model: both runs are fp32
# from the same seed checkpoint and data order, so they differ only by kernel
# and reduction order (TF32 and fused kernels on the GPU), which stays well below this.
TINY_LOSS_ATOL = 0.05
# Iterations left out of the 1.3B-width throughput figures (compilation, allocator warm-up).
WARMUP_ITERS = 3
PROMPT = "대한민국은"


@dataclass
class StepResult:
    name: str = ""
    verdict: str = "pass"  # pass | fail | skipped
    reason: str = ""
    duration_s: float = 0.0
    figures: dict[str, str] = field(default_factory=dict)
    # Preformatted text shown in full (a loss table, the benchmark table).
    details: str = ""
    log_tail: str = ""


@dataclass
class Outcome:
    """One subprocess run under `timeout`."""

    rc: int
    seconds: float
    log: Path

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def timed_out(self) -> bool:
        return self.rc in (124, 137)

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def describe(self) -> str:
        if self.timed_out:
            return f"timed out after {self.seconds:.0f}s (see {self.log.name})"
        return f"exit code {self.rc} (see {self.log.name})"


@dataclass
class Context:
    out: Path
    work: Path
    wheels: Path
    python: str
    device: dict
    deadline: float
    step_deadline: float = 0.0
    # Filled by the benchmark step from the device name: (bf16 TFLOP/s, HBM GB/s).
    peak: tuple[float, float] | None = None
    # The verdicts of the steps run so far in this run.
    verdicts: dict[str, str] = field(default_factory=dict)

    @property
    def site(self) -> Path:
        return self.work / "site"

    def env(self, **extra: str) -> dict[str, str]:
        # Prepended, so that a PYTHONPATH the machine needs for its own packages still works.
        path = os.pathsep.join(p for p in (str(self.site), os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
        env.pop("TRITON_INTERPRET", None)
        return env | extra

    def fresh(self, name: str) -> Path:
        """An empty scratch folder: a second run on a warm machine must not resume,
        read or export what the first one left (tiny runs auto-resume from their checkpoints)."""
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def run(self, label: str, cmd: list[str], env: dict[str, str] | None = None) -> Outcome:
        """Run cmd in the repository under coreutils `timeout`, with what is left of the
        step's budget, in a session of its own; whatever of that session outlives the
        command (torchrun runs in a process group of its own, which `timeout` does not
        signal) is stopped before this returns."""
        log = self.out / "logs" / f"{label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        limit = max(int(self.step_deadline - time.monotonic()), 1)
        start = time.monotonic()
        with log.open("w", encoding="utf-8") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(
                ["timeout", "--kill-after=10", str(limit), *cmd],
                cwd=ROOT,
                env=env or self.env(),
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            rc = proc.wait()
            left = stop_session(proc.pid)
            if left:
                f.write(f"\n[gpu-check] stopped {len(left)} leftover processes: {left}\n")
        return Outcome(rc, time.monotonic() - start, log)

    def cli(self, label: str, *args: str, env: dict[str, str] | None = None) -> Outcome:
        """`chatbaker ARGS` from the private install (its console script is not on PATH)."""
        return self.run(label, [self.python, "-m", "chatbaker_megatron.cli", *args], env)


def session_members(sid: int) -> list[int]:
    """The live processes of session `sid` (Linux /proc), zombies left out."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            members.append(int(stat.parent.name))
    return members


def stop_pids(pids: list[int], grace_s: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL after grace_s what is still there; the pids signalled."""
    if not pids:
        return []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        end = time.monotonic() + grace_s
        while time.monotonic() < end and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        if not any(_alive(pid) for pid in pids):
            break
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def stop_session(sid: int) -> list[int]:
    """Stop what is left of session `sid` (a step command's session); the pids stopped."""
    return stop_pids(session_members(sid))


def gpu_pids() -> set[int]:
    """The processes nvidia-smi lists as using a GPU."""
    try:
        query = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:  # gpu-check.sh found it; only a unit test lacks it
        return set()
    return {int(word) for word in query.stdout.split() if word.isdigit()}


def fail(outcome: Outcome, what: str) -> StepResult:
    return StepResult(
        verdict="fail", reason=f"{what}: {outcome.describe()}", log_tail=outcome.tail()
    )


def skipped(reason: str) -> StepResult:
    return StepResult(verdict="skipped", reason=reason)


# ---------------------------------------------------------------- the steps


def step_install(ctx: Context) -> StepResult:
    wheels = sorted(ctx.wheels.glob("*.whl"))
    if not wheels:
        return StepResult(
            verdict="fail",
            reason=f"no wheels in {ctx.wheels}: run `make gpu-wheels` where PyPI is reachable "
            "and carry the folder here",
        )
    pip = [ctx.python, "-m", "pip", "install", "--no-index", "--no-deps", "--upgrade"]
    deps = ctx.run("install-wheels", [*pip, "--target", str(ctx.site), *map(str, wheels)])
    if not deps.ok:
        return fail(deps, "installing the wheel set")
    # The project from this working tree (not a wheel that may be older than it);
    # the CUDA extension is the next step's, with its own budget and log.
    project = ctx.run(
        "install-project",
        [*pip, "--no-build-isolation", "--target", str(ctx.site), str(ROOT)],
        env=ctx.env(CHATBAKER_BUILD_CUDA="0"),
    )
    if not project.ok:
        return fail(project, "installing chatbaker_megatron from the working tree")
    probe = ctx.run("install-import", [ctx.python, "-c", IMPORT_PROBE])
    if not probe.ok:
        return fail(probe, "importing the installed packages")
    versions = json.loads(probe.tail(1))
    return StepResult(
        reason=f"{len(wheels)} wheels + the working tree into {ctx.site}",
        figures=versions,
        log_tail=probe.tail(),
    )


IMPORT_PROBE = """
import json, importlib.util
import hydra, megatron.core, torch
import chatbaker_megatron.training.trainer
print(json.dumps({
    "torch": torch.__version__, "cuda": str(torch.version.cuda),
    "megatron-core": megatron.core.__version__, "hydra-core": hydra.__version__,
    "transformer_engine": "installed" if importlib.util.find_spec("transformer_engine") else "absent",
}))
"""


TOOLKIT_PROBE = """
import json
import torch
from torch.utils.cpp_extension import CUDA_HOME
print(json.dumps({"cuda_home": CUDA_HOME, "torch_cuda": torch.version.cuda}))
"""


def toolkit_problem(cuda_home: str | None, torch_cuda: str | None) -> str | None:
    """Why the CUDA extension cannot be built here, or None: nvcc must exist under
    CUDA_HOME and its major CUDA version must be torch's (an extension built by another
    major version does not load)."""
    if not cuda_home:
        return "no CUDA toolkit: torch's CUDA_HOME is None"
    nvcc = Path(cuda_home) / "bin" / "nvcc"
    if not nvcc.is_file():
        return f"CUDA_HOME={cuda_home} has no bin/nvcc"
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"release (\d+)\.(\d+)", version.stdout)
    if not found:
        return f"{nvcc} --version printed no release number"
    if not torch_cuda or found.group(1) != torch_cuda.split(".")[0]:
        return (
            f"nvcc is CUDA {found.group(1)}.{found.group(2)}, torch is built for CUDA {torch_cuda}"
        )
    return None


def step_cuda_extension(ctx: Context) -> StepResult:
    toolkit = ctx.run("cuda-toolkit", [ctx.python, "-c", TOOLKIT_PROBE])
    if not toolkit.ok:
        return fail(toolkit, "probing the CUDA toolkit")
    found = json.loads(toolkit.tail(1))
    problem = toolkit_problem(found["cuda_home"], found["torch_cuda"])
    if problem:
        return skipped(problem)
    # --build-lib puts chatbaker_kernels/_cuda_rmsnorm*.so into the private install.
    build = ctx.run(
        "cuda-extension",
        [ctx.python, "setup.py", "build_ext", "--build-lib", str(ctx.site),
         "--build-temp", str(ctx.work / "build-ext")],
    )  # fmt: skip
    if not build.ok:
        return fail(build, "building chatbaker_kernels._cuda_rmsnorm")
    built = sorted(p.name for p in (ctx.site / "chatbaker_kernels").glob("_cuda_rmsnorm*.so"))
    if not built:
        return StepResult(verdict="fail", reason="build_ext built nothing", log_tail=build.tail())
    return StepResult(
        reason=f"CUDA_HOME={found['cuda_home']}",
        figures={"extension": built[0], "build s": f"{build.seconds:.0f}"},
        log_tail=build.tail(),
    )


def pytest_step(ctx: Context, label: str, *paths: str) -> StepResult:
    tests = ctx.run(label, [ctx.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths])
    summary = tests.tail(1)
    if not tests.ok:
        return fail(tests, summary or "pytest")
    return StepResult(reason=summary, log_tail=tests.tail())


def step_kernel_tests(ctx: Context) -> StepResult:
    return pytest_step(ctx, "kernel-tests", "tests/kernels/test_gpu_only.py")


def kernel_bench_command(ctx: Context, record_path: Path) -> list[str]:
    # As a module from the repository root, so that its `tests.support` import resolves
    # (a script's sys.path[0] is benchmarks/, and PYTHONPATH holds only the install).
    return [ctx.python, "-m", "benchmarks.kernels", "--iters", "10", "--json", str(record_path)]


def step_kernel_bench(ctx: Context) -> StepResult:
    record_path = ctx.out / "kernel-bench.json"
    record_path.unlink(missing_ok=True)
    bench = ctx.run("kernel-bench", kernel_bench_command(ctx, record_path))
    if not bench.ok:
        return fail(bench, "benchmarks/kernels.py")
    if not record_path.exists():
        return StepResult(
            verdict="fail", reason="the benchmark wrote no record", log_tail=bench.tail()
        )
    record = json.loads(record_path.read_text(encoding="utf-8"))
    if record["peak_tflops"]:
        ctx.peak = (record["peak_tflops"], record["peak_hbm_gbs"])
    figures = {"device": record["device"]}
    if ctx.peak:
        figures["peak"] = f"{ctx.peak[0]:.0f} TFLOP/s bf16, {ctx.peak[1]:.0f} GB/s"
    for row in record["rows"]:
        if row["backend"] == "triton" and row["op"] in ("attention dense", "rms_norm"):
            key = f"triton {row['op']} {row['model']} s{row['seq']}"
            figures[key] = f"{row['throughput']} ({row['% peak']} of peak, {row['vs torch']})"
    table = bench.log.read_text(encoding="utf-8").split("\n", 1)[1]
    return StepResult(
        reason="Triton vs torch eager / SDPA, fwd+bwd bf16", figures=figures, details=table
    )


def tiny_overrides(
    run_dir: Path, data_root: Path, device: str, init_from: Path | None
) -> list[str]:
    """The tiny model on one process: device "cpu" (the reference) or "gpu" (NCCL)."""
    cluster = (
        ["cluster=local_cpu", "cluster.devices_per_node=1"]
        if device == "cpu"
        else ["cluster=gpu_1", "cluster.precision=fp32"]
    )
    return [
        *cluster,
        "parallel=single",
        f"run_dir={run_dir}",
        f"data.root={data_root}",
        f"train.train_iters={TINY_ITERS if init_from else 0}",
        *([f"train.init_from={init_from}"] if init_from else []),
        "logging.log_interval=1",
        # TensorBoard is not among the machine's packages nor in the wheel set.
        "logging.tensorboard=false",
    ]


def losses(run_dir: Path) -> dict[int, float]:
    records = read_metrics(run_dir)
    return {r["iteration"]: r["loss"] for r in records if "loss" in r}


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def loss_table(cpu: dict[int, float], gpu: dict[int, float]) -> tuple[str, float]:
    """Side-by-side losses and the largest difference over the common iterations."""
    lines = [f"{'iter':>5}  {'CPU loss':>9}  {'GPU loss':>9}  {'diff':>8}"]
    worst = 0.0
    for it in sorted(cpu.keys() & gpu.keys()):
        diff = gpu[it] - cpu[it]
        worst = max(worst, abs(diff))
        lines.append(f"{it:>5}  {cpu[it]:>9.4f}  {gpu[it]:>9.4f}  {diff:>+8.4f}")
    return "\n".join(lines), worst


def step_train_tiny(ctx: Context) -> StepResult:
    data_root = ctx.work / "demo_data"
    seed, cpu_dir, gpu_dir = (ctx.fresh(name) for name in ("tiny-seed", "tiny-cpu", "tiny-gpu"))
    cpu_env = ctx.env(CUDA_VISIBLE_DEVICES="")
    seed_run = ctx.cli(
        "train-tiny-seed", "train", *tiny_overrides(seed, data_root, "cpu", None), env=cpu_env
    )
    if not seed_run.ok:
        return fail(seed_run, "writing the seed checkpoint (CPU)")
    ckpt = seed / "checkpoints"
    cpu_run = ctx.cli(
        "train-tiny-cpu", "train", *tiny_overrides(cpu_dir, data_root, "cpu", ckpt), env=cpu_env
    )
    gpu_run = ctx.cli("train-tiny-gpu", "train", *tiny_overrides(gpu_dir, data_root, "gpu", ckpt))
    if not gpu_run.ok:
        return fail(gpu_run, "the GPU run")
    if not cpu_run.ok:
        return fail(cpu_run, "the CPU reference run")
    table, worst = loss_table(losses(cpu_dir), losses(gpu_dir))
    result = StepResult(
        reason=f"max |GPU - CPU| loss {worst:.4f} (accepted <= {TINY_LOSS_ATOL})",
        figures={
            "iterations": str(TINY_ITERS),
            "max loss diff": f"{worst:.4f}",
            "kernels (GPU)": kernels_line(gpu_dir),
            "GPU run s": f"{gpu_run.seconds:.0f}",
            "CPU run s": f"{cpu_run.seconds:.0f}",
        },
        details=table,
        log_tail=gpu_run.tail(),
    )
    if worst > TINY_LOSS_ATOL or len(losses(gpu_dir)) < TINY_ITERS:
        result.verdict = "fail"
    return result


def kernels_line(run_dir: Path) -> str:
    """What the dispatcher resolved, from the run's train.log ("kernels: attention=...")."""
    log = run_dir / "train.log"
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    found = [line.split("kernels: ", 1)[1] for line in lines if "kernels: " in line]
    return found[-1] if found else "?"


def wide_overrides(
    run_dir: Path, data_root: Path, backend: str, peak: tuple[float, float] | None
) -> list[str]:
    """1.3B width (hidden 2048, 32 heads x 64, seq 2048) cut to 2 layers, bf16 on one GPU."""
    device = (
        [f"cluster.device.peak_tflops={peak[0]}", f"cluster.device.memory_bandwidth_gbs={peak[1]}"]
        if peak
        else []
    )
    return [
        "model=1.3b",
        "model.num_layers=2",
        "model.vocab_size=null",  # the demo tokenizer's 4,096 ids, not the release's 50,304
        f"model.kernels.attention={backend}",
        f"model.kernels.norm={backend}",
        "cluster=gpu_1",
        *device,
        "parallel=single",
        "parallel.micro_batch_size=4",
        "train.seq_length=2048",
        "train.global_batch_size=8",
        f"train.train_iters={WIDE_ITERS}",
        "optim.warmup_iters=2",  # the schema wants warm-up shorter than the run
        f"run_dir={run_dir}",
        f"data.root={data_root}",
        "logging.log_interval=1",
        "logging.tensorboard=false",
        # A 1.3B-width checkpoint with its optimizer is gigabytes: not what is measured here.
        "checkpoint.save_on_exit=false",
        "checkpoint.save_interval=100000",
    ]


def throughput(records: list[dict]) -> dict[str, str]:
    """Median tokens/s, TFLOP/s and MFU over the logged steps after the warm-up."""
    steps = [r for r in records if "tokens_per_s" in r and r["iteration"] > WARMUP_ITERS]
    if not steps:
        return {}

    def median(key: str) -> float:
        return statistics.median(r[key] for r in steps)

    return {
        "tokens/s": f"{median('tokens_per_s'):,.0f}",
        "TFLOP/s": f"{median('tflops_per_device'):.1f}",
        "MFU": f"{100 * median('mfu'):.1f}%",
        "memory GiB": f"{max(r['memory_gib'] for r in steps):.1f}",
        "last loss": f"{steps[-1]['loss']:.3f}",
    }


def step_train_wide(ctx: Context) -> StepResult:
    backends = ["triton", "torch"]
    if ctx.device.get("transformer_engine"):
        backends.append("te")
    figures, failures, tail = {}, [], ""
    for backend in backends:
        run_dir = ctx.fresh(f"wide-{backend}")
        run = ctx.cli(
            f"train-1.3b-{backend}",
            "train",
            *wide_overrides(run_dir, ctx.work / "demo_data", backend, ctx.peak),
        )
        measured = throughput(read_metrics(run_dir))
        figures |= {f"{backend} {key}": value for key, value in measured.items()}
        if not run.ok or not measured:
            failures.append(f"{backend}: {run.describe()}")
            tail = run.tail()
    peak_note = "MFU vs the detected peak" if ctx.peak else "MFU vs conf/cluster/gpu_1.yaml's peak"
    reason = f"{', '.join(backends)}, {WIDE_ITERS} steps of 8 x 2048 tokens; {peak_note}"
    if "te" not in backends:
        reason += "; Transformer Engine not installed: te skipped"
    if failures:
        return StepResult(
            verdict="fail", reason="; ".join(failures), figures=figures, log_tail=tail
        )
    return StepResult(reason=reason, figures=figures)


def step_hf(ctx: Context) -> StepResult:
    checkpoint = ctx.work / "tiny-gpu" / "checkpoints"
    # Only this run's checkpoint: one left by an earlier run would report old results.
    if "train-tiny" not in ctx.verdicts or not (checkpoint / "latest").exists():
        return skipped("no checkpoint from this run's tiny GPU run (train-tiny step)")
    hf_dir = ctx.fresh("hf")
    export = ctx.cli(
        "hf-export", "export-hf", "--checkpoint", str(checkpoint), "--output", str(hf_dir),
        "--overwrite", "--verify", "--no-progress",
    )  # fmt: skip
    if not export.ok:
        return fail(export, "chatbaker export-hf --verify")
    generate = ctx.cli(
        "hf-generate", "generate", "--hf", str(hf_dir), "--prompt", PROMPT,
        "--max-new-tokens", "24", "--greedy", "--json",
    )  # fmt: skip
    if not generate.ok:
        return fail(generate, "chatbaker generate")
    record = json.loads(generate.tail(1))
    return StepResult(
        reason="export verified against transformers; greedy generation",
        figures={"text": record["text"], "stop": record["stop_reason"]},
        log_tail=export.tail(),
    )


def step_preflight(ctx: Context) -> StepResult:
    return pytest_step(ctx, "preflight", "tests/unit/test_preflight.py")


def step_parallel(ctx: Context) -> StepResult:
    if ctx.device["count"] < 2:
        return skipped(f"needs 2 GPUs, found {ctx.device['count']}")
    return pytest_step(ctx, "parallel-nccl", "tests/parallel")


# (name, budget in seconds, function): in the order they run. The steps that a
# one-GPU machine can do come first and their budgets add up to TOTAL_BUDGET_S at
# most, so none of them is skipped for time; tests/parallel (two GPUs) takes what is left.
STEPS: list[tuple[str, int, Callable[[Context], StepResult]]] = [
    ("install", 45, step_install),
    ("cuda-extension", 60, step_cuda_extension),
    ("kernel-tests", 40, step_kernel_tests),
    ("kernel-bench", 60, step_kernel_bench),
    ("train-tiny", 90, step_train_tiny),
    ("train-1.3b", 100, step_train_wide),
    ("hf", 45, step_hf),
    ("preflight", 25, step_preflight),
    ("parallel-nccl", TOTAL_BUDGET_S, step_parallel),
]
# Steps that cannot run without the install.
NEEDS_INSTALL = {name for name, _, _ in STEPS} - {"install"}


def run_steps(ctx: Context, names: list[str]) -> list[StepResult]:
    results: list[StepResult] = []
    before = gpu_pids()  # not ours: never touched
    for name, budget, step in STEPS:
        if name not in names:
            continue
        start = time.monotonic()
        remaining = ctx.deadline - start
        installed = all(r.verdict == "pass" for r in results if r.name == "install")
        if remaining < MIN_STEP_S:
            result = skipped(f"the {TOTAL_BUDGET_S}s total budget is spent")
        elif name in NEEDS_INSTALL and not installed:
            result = skipped("the install step failed")
        else:
            ctx.step_deadline = start + min(budget, remaining)
            try:
                result = step(ctx)
            except Exception:  # a bug in one step must not cost the others their verdict
                result = StepResult(verdict="fail", reason="the check itself raised")
                result.log_tail = traceback.format_exc()
        # The next step needs the GPU to itself: nothing of this one may be left on it.
        left = sorted(gpu_pids() - before)
        if left:
            stop_pids(left)
            result.verdict = "fail"
            result.reason += f"; processes {left} were still on the GPU after the step (stopped)"
        result.name = name
        result.duration_s = time.monotonic() - start
        ctx.verdicts[name] = result.verdict
        results.append(result)
        print(f"{name:<15} {result.verdict:<8} {result.duration_s:5.0f}s  {result.reason}")
        write_report(ctx.out, ctx.device, results)
    return results


# ---------------------------------------------------------------- the report


def write_report(out: Path, device: dict, results: list[StepResult]) -> tuple[Path, Path]:
    """OUT/gpu-check.md (for people) and OUT/gpu-check.json (the same, for tools)."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {v: sum(r.verdict == v for r in results) for v in ("pass", "fail", "skipped")}
    record = {
        "device": device,
        "summary": counts,
        "total_s": round(sum(r.duration_s for r in results), 1),
        "steps": [asdict(r) | {"duration_s": round(r.duration_s, 1)} for r in results],
    }
    json_path = out / "gpu-check.json"
    json_path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", "utf-8")

    lines = [
        "# gpu-check report",
        "",
        "Device: " + ", ".join(f"{key} {value}" for key, value in device.items()),
        "",
        f"{counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped "
        f"in {record['total_s']:.0f}s.",
        "",
        "| step | verdict | duration | reason |",
        "| --- | --- | --- | --- |",
        *(
            f"| {r.name} | {r.verdict.upper()} | {r.duration_s:.0f}s | {_cell(r.reason)} |"
            for r in results
        ),
    ]
    for r in results:
        lines += ["", f"## {r.name}: {r.verdict.upper()}", "", r.reason or "-"]
        if r.figures:
            lines += ["", "| figure | value |", "| --- | --- |"]
            lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in r.figures.items()]
        for title, text in (("", r.details), ("Log tail:", r.log_tail)):
            if text:
                lines += ["", *([title] if title else []), "", "```", text.rstrip(), "```"]
    md_path = out / "gpu-check.md"
    md_path.write_text("\n".join(lines) + "\n", "utf-8")
    return md_path, json_path


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------- main

DEVICE_PROBE = """
import importlib.util, json, torch, triton
count = torch.cuda.device_count() if torch.cuda.is_available() else 0
print(json.dumps({
    "name": torch.cuda.get_device_name(0) if count else None, "count": count,
    "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
    "transformer_engine": importlib.util.find_spec("transformer_engine") is not None,
}))
"""


def probe_device(python: str) -> dict | None:
    """The GPUs torch sees (in a subprocess: this process stays free of CUDA), or None."""
    probe = subprocess.run([python, "-c", DEVICE_PROBE], capture_output=True, text=True)
    if probe.returncode != 0:
        return None
    device = json.loads(probe.stdout.splitlines()[-1])
    return device if device["count"] else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-report")
    parser.add_argument("--wheels", default=str(ROOT / ".gpu-wheels"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "gpu-check"))
    parser.add_argument(
        "--steps", nargs="+", default=[name for name, _, _ in STEPS],
        choices=[name for name, _, _ in STEPS], help="run only these (install is needed by all)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    device = probe_device(sys.executable)
    if device is None:
        print(
            "gpu-check: no CUDA GPU visible to torch here; it needs one or two NVIDIA GPUs "
            "and a CUDA build of torch (see docs/gpu.md).",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out).resolve()
    ctx = Context(
        out=out,
        work=Path(args.work).resolve(),
        wheels=Path(args.wheels).resolve(),
        python=sys.executable,
        device=device,
        deadline=time.monotonic() + TOTAL_BUDGET_S,
    )
    ctx.work.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check on {device['count']} x {device['name']}; report: {out}/gpu-check.md")
    results = run_steps(ctx, args.steps)
    print(f"report: {out / 'gpu-check.md'}")
    return 1 if any(r.verdict == "fail" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
