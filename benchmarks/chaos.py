"""Chaos benchmark: kill -9 and damaged checkpoints on real 2-rank runs; each must heal or resume.

    .venv/bin/python benchmarks/chaos.py [--trials 20] [--seed 0] [--iters 12] [--save-interval 3]
                                         [--kinds rank,tree,shard,launcher,shared]
                                         [--async-save] [--workdir DIR] [--keep]

Every trial is one run of the bundled tiny model on 2 CPU ranks through the
real command line, `chatbaker train run_dir=... data.root=...` (the demo data
is prepared once with `chatbaker prepare-data`), `--iters` iterations with a
checkpoint every `--save-interval` (keep_last=2, checkpoint.fallback=true,
launch.max_restarts=3; with `--async-save` those checkpoints are written in
the background while training goes on, so `save` kills land while a
background writer runs). Each trial draws one fault at random:

- rank: kill -9 of one rank (0 or 1, at random), at a random moment:
  `step` (after a random logged iteration, plus up to 0.3 s), `save` (up to
  0.5 s after an `iter_N.tmp/` appears) or `publish` (rank 0 is frozen with
  SIGSTOP the moment `iter_N.tmp/manifest.json` or `.latest.tmp` appears,
  i.e. between the manifest, the rename and the `latest` update; then the
  chosen rank is killed and rank 0 continued if it lives). Expected: the
  same command finishes by itself, exit code 0 (torchrun's restart policy),
  with a `restart` row in metrics.jsonl whose iteration is no older than the
  checkpoint `latest` named at the kill: self-healed.
- tree: kill -9 of the launcher, torchrun and both ranks at once (a node
  failure), at the same three moments. Expected: running the same command
  again resumes from the checkpoint `latest` names (without a `latest`: the
  newest complete one, or afresh when there is none) and finishes: resumed.
- shard: a run is killed (whole tree) once it has two complete checkpoints;
  then one `*.distcp` of the checkpoint `latest` names is truncated to a
  random shorter size, deleted, or has 4 KiB overwritten with random bytes.
  Expected: the rerun sets that checkpoint aside as `iter_N.corrupt`, falls
  back to the previous complete one, resumes from it and finishes: resumed.
- launcher: kill -9 of the launcher (`chatbaker train`) alone, at `step` or
  `save`. Expected: torchrun and both ranks end with it within
  ORPHAN_GRACE_S (they used to train on with the run-dir lock released),
  and the same command run again resumes from `latest` and finishes: resumed.
- shared: a second `chatbaker train` in another run dir with the same
  `checkpoint.dir` starts while the first trains. Expected: it is refused at
  once (exit 1, "checkpoint dir ... is in use") and the first finishes
  undisturbed: refused.

After every trial: the last command exited 0, metrics.jsonl reaches the final
iteration, `latest` names the final checkpoint, and no complete checkpoint
was lost. The rule for the last one: the complete checkpoints (`iter_N/`
directories holding manifest.json, the only ones `latest` can name; never an
`iter_N.tmp/`) are listed at the moment of the fault. Each must still exist
as a complete checkpoint at the end, unless the end holds at least keep_last
complete checkpoints newer than it: pruning removes a checkpoint only once
keep_last newer ones are complete, and every later prune keeps the newest
keep_last, so "keep_last newer ones exist at the end" is exactly the case in
which a legitimate prune may have removed it. Exempt: the checkpoint the
trial damaged on purpose (it must be set aside as `iter_N.corrupt`). A
checkpoint that was renamed but not yet named by `latest` (in flight) is
listed too; a resumed run saves that iteration again, so it must exist at
the end as well (or have been pruned under the same rule).

Prints one row per trial and a summary: trials, self-healed, resumed,
failed, lost checkpoints (must be 0). Compared with: Megatron-LM, which
(without nvidia-resiliency-ext) restarts nothing and has no fallback from a
damaged checkpoint. Exits 1 if any trial failed or lost a checkpoint. Takes
~20-40 s a trial on 2 cores. Every process started is in a process group of
its own and tagged in its environment; all of them are killed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATBAKER = os.path.join(os.path.dirname(sys.executable), "chatbaker")
TAG_ENV = "CHATBAKER_CHAOS_TAG"
KEEP_LAST = 2
COMMAND_TIMEOUT_S = 300
ITER_DIR = re.compile(r"^iter_(\d{7})$")
RESUMED = re.compile(r"resumed from \S*iter_(\d{7}) at iteration (\d+)")
KINDS = {
    "rank": ("step", "save", "publish"),
    "tree": ("step", "save", "publish"),
    "launcher": ("step", "save"),
}
ALL_KINDS = ("rank", "tree", "shard", "launcher", "shared")
# How long torchrun and the ranks may outlive a killed launcher (parent-death signal: at once).
ORPHAN_GRACE_S = 10
DAMAGES = ("truncate", "delete", "corrupt")


# --- the run directory --------------------------------------------------------------------


def complete(ckpt: str) -> list[int]:
    """Iterations of the complete checkpoints: iter_N/ directories with a manifest."""
    if not os.path.isdir(ckpt):
        return []
    found = []
    for name in os.listdir(ckpt):
        match = ITER_DIR.match(name)
        if match and os.path.exists(os.path.join(ckpt, name, "manifest.json")):
            found.append(int(match.group(1)))
    return sorted(found)


def latest(ckpt: str) -> int | None:
    """The iteration `latest` names (None without one)."""
    try:
        with open(os.path.join(ckpt, "latest"), encoding="utf-8") as f:
            return int(f.read().strip()[len("iter_") :])
    except (OSError, ValueError):
        return None


def metric_rows(run_dir: str) -> list[dict]:
    """The rows of metrics.jsonl (a torn last line is skipped)."""
    try:
        with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return [r for r in rows if isinstance(r, dict)]


def logged(run_dir: str) -> list[int]:
    """Iterations with a loss row in metrics.jsonl."""
    return [int(r["iteration"]) for r in metric_rows(run_dir) if "loss" in r]


def restart_rows(run_dir: str) -> list[dict]:
    return [r for r in metric_rows(run_dir) if r.get("event") == "restart"]


def writing(ckpt: str) -> list[str]:
    with contextlib.suppress(OSError):
        return [n for n in os.listdir(ckpt) if n.startswith("iter_") and n.endswith(".tmp")]
    return []


def publishing(ckpt: str) -> bool:
    """Rank 0 is between the manifest and the end of the `latest` update."""
    if os.path.exists(os.path.join(ckpt, ".latest.tmp")):
        return True
    return any(os.path.exists(os.path.join(ckpt, n, "manifest.json")) for n in writing(ckpt))


def phase(ckpt: str) -> str:
    """What the checkpoint directory shows right now (for the table)."""
    names = writing(ckpt)
    if os.path.exists(os.path.join(ckpt, ".latest.tmp")):
        return "latest.tmp"
    if any(os.path.exists(os.path.join(ckpt, n, "manifest.json")) for n in names):
        return "manifest"
    done, named = complete(ckpt), latest(ckpt)
    if done and named is not None and done[-1] > named:
        return "renamed"
    return "save" if names else "step"


def lost_checkpoints(before: list[int], after: list[int], exempt: set[int]) -> list[int]:
    """Checkpoints complete at the fault and gone now, other than by a legitimate prune."""
    return [
        it
        for it in before
        if it not in exempt and it not in after and sum(a > it for a in after) < KEEP_LAST
    ]


# --- processes ----------------------------------------------------------------------------


class Job:
    """One `chatbaker train` command in a new session (its own process group), tagged."""

    def __init__(self, args: list[str], log_path: str, tag: str) -> None:
        self.tag = tag
        self.log_path = log_path
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in wait/kill
        self.proc = subprocess.Popen(
            [CHATBAKER, "train", *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, TAG_ENV: tag},
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rank_pid(self, rank: int) -> int | None:
        """torchrun's worker with RANK=rank."""
        with contextlib.suppress(psutil.NoSuchProcess):
            for proc in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    env = proc.environ()
                    if "LOCAL_RANK" in env and env.get("RANK") == str(rank):
                        return proc.pid
        return None

    def wait(self, timeout: float = COMMAND_TIMEOUT_S) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if self.proc.poll() is not None:
                self.log.close()

    def kill(self) -> None:
        """SIGKILL the whole tree at once: the launcher's group, its descendants, and any
        process carrying this job's tag (torchrun's workers live in sessions of their own)."""
        kill_tagged(self.tag, self.proc.pid)
        self.proc.wait()
        self.log.close()

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


def tagged(tag: str) -> list[psutil.Process]:
    mine = []
    uid = os.getuid()
    for proc in psutil.process_iter(["uids"]):
        with contextlib.suppress(psutil.Error):
            uids = proc.info["uids"]
            if uids and uids.real == uid and proc.environ().get(TAG_ENV) == tag:
                mine.append(proc)
    return mine


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_tagged(tag: str, root_pid: int | None = None) -> None:
    for _ in range(20):
        procs: dict[int, psutil.Process] = {}
        if root_pid is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(root_pid)
                procs[root.pid] = root
                procs |= {p.pid: p for p in root.children(recursive=True)}
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(root_pid, signal.SIGKILL)
        procs |= {p.pid: p for p in tagged(tag)}
        procs = {pid: p for pid, p in procs.items() if _live(p)}
        if not procs:
            return
        for proc in procs.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(list(procs.values()), timeout=5)


# --- trials -------------------------------------------------------------------------------


@dataclass
class Trial:
    number: int
    kind: str  # rank, tree, shard
    moment: str  # step/save/publish, or the damage
    target: str = "-"  # rank0, rank1, tree, or the damaged file
    observed: str = "-"  # what the checkpoint dir showed at the fault
    commands: int = 0
    resumed_from: str = "-"
    outcome: str = "failed"  # self-healed, resumed, refused, failed
    lost: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # any one fails the trial
    notes: list[str] = field(default_factory=list)  # printed, not failing
    seconds: float = 0.0


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: str) -> None:
        self.args = args
        self.workdir = workdir
        self.data_root = os.path.join(workdir, "data")
        self.rng = random.Random(args.seed)
        self.tags: list[str] = []

    def overrides(self, run_dir: str) -> list[str]:
        return [
            f"run_dir={run_dir}",
            f"data.root={self.data_root}",
            "train.seq_length=64",
            "train.global_batch_size=4",
            f"train.train_iters={self.args.iters}",
            "train.eval_interval=0",
            "optim.warmup_iters=1",
            "logging.log_interval=1",
            "logging.tensorboard=false",
            f"checkpoint.save_interval={self.args.save_interval}",
            f"checkpoint.keep_last={KEEP_LAST}",
            "checkpoint.fallback=true",
            "launch.max_restarts=3",
            "launch.monitor_interval=0.2",
            f"checkpoint.async_save={str(self.args.async_save).lower()}",
        ]

    def prepare(self) -> None:
        subprocess.run(
            [CHATBAKER, "prepare-data", f"data.root={self.data_root}"],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )

    def start(self, trial: Trial, run_dir: str, extra: tuple[str, ...] = ()) -> Job:
        trial.commands += 1
        tag = uuid.uuid4().hex
        self.tags.append(tag)
        log = os.path.join(run_dir + ".logs", f"command{trial.commands}.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        return Job([*self.overrides(run_dir), *extra], log, tag)

    def cleanup(self) -> None:
        """Kill whatever this trial's commands left running."""
        for tag in self.tags:
            kill_tagged(tag)
        self.tags.clear()

    # -- waiting for a moment --

    def wait_for(self, job: Job, ready, poll: float = 0.002, timeout: float = 240) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and job.alive():
            if ready():
                return True
            time.sleep(poll)
        return False

    def reach_moment(self, job: Job, run_dir: str, moment: str) -> bool:
        """Block until the trial's moment; True when it was caught before the run ended."""
        ckpt = os.path.join(run_dir, "checkpoints")
        iters, interval = self.args.iters, self.args.save_interval
        if moment == "step":
            after = self.rng.randint(1, iters - 2)
            if not self.wait_for(job, lambda: (logged(run_dir) or [0])[-1] >= after, poll=0.02):
                return False
            time.sleep(self.rng.uniform(0, 0.3))
            return job.alive()
        if moment == "save":
            # A save after the first one, so there is something complete to lose.
            nth = self.rng.randint(2, max(2, iters // interval - 1))
            seen: set[str] = set()

            def nth_save() -> bool:
                seen.update(writing(ckpt))
                return len(seen) >= nth and bool(writing(ckpt))

            if not self.wait_for(job, nth_save):
                return False
            time.sleep(self.rng.uniform(0, 0.5))
            return job.alive()
        return self.wait_for(job, lambda: publishing(ckpt), poll=0.001)

    # -- the checks every trial ends with --

    def finish(self, trial: Trial, run_dir: str, code: int | None, before: list[int]) -> None:
        ckpt = os.path.join(run_dir, "checkpoints")
        iters = self.args.iters
        if code != 0:
            trial.problems.append(f"exit code {code}")
        rows = logged(run_dir)
        if not rows or rows[-1] != iters:
            trial.problems.append(f"metrics end at {rows[-1] if rows else None}, not {iters}")
        elif rows != list(range(1, iters + 1)):
            trial.notes.append(f"metrics rows {rows} (not 1..{iters} once each)")
        if latest(ckpt) != iters:
            trial.problems.append(f"latest names {latest(ckpt)}, not {iters}")
        exempt = {int(trial.target.split("/")[0][5:])} if trial.kind == "shard" else set()
        trial.lost = lost_checkpoints(before, complete(ckpt), exempt)
        if trial.lost:
            trial.problems.append(f"lost {trial.lost} (complete at the fault: {before})")

    # -- the kinds --

    def kill_rank(self, trial: Trial, run_dir: str) -> None:
        ckpt = os.path.join(run_dir, "checkpoints")
        job = self.start(trial, run_dir)
        try:
            if not self.wait_for(job, lambda: bool(logged(run_dir)), poll=0.05):
                trial.problems.append("the run never logged a step")
                self.finish(trial, run_dir, job.wait(), [])
                return
            rank = self.rng.randint(0, 1)
            pids = {r: job.rank_pid(r) for r in (0, 1)}
            trial.target = f"rank{rank}"
            if not self.reach_moment(job, run_dir, trial.moment):
                trial.problems.append(f"the run ended before the moment ({trial.moment})")
                self.finish(trial, run_dir, job.wait(), [])
                return
            rank0 = pids[0]
            if trial.moment == "publish" and rank0 is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rank0, signal.SIGSTOP)
            trial.observed = phase(ckpt)
            before, named = complete(ckpt), latest(ckpt)
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(pids[rank], signal.SIGKILL)
            if trial.moment == "publish" and rank0 is not None and rank != 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rank0, signal.SIGCONT)
            code = job.wait()
            if code is None:
                trial.problems.append(f"still running after {COMMAND_TIMEOUT_S} s")
                job.kill()
        finally:
            if job.alive():
                job.kill()
        restarts = restart_rows(run_dir)
        if not restarts:
            trial.problems.append("no restart row in metrics.jsonl")
        else:
            resumed = restarts[0]["iteration"]
            trial.resumed_from = str(resumed)
            if resumed < (named or 0):
                trial.problems.append(f"restarted from {resumed}, latest named {named}")
        self.finish(trial, run_dir, code, before)
        if not trial.problems:
            trial.outcome = "self-healed"

    def kill_tree(self, trial: Trial, run_dir: str) -> tuple[list[int], bool]:
        """Start a run, kill -9 everything at the trial's moment; the checkpoints at the fault."""
        ckpt = os.path.join(run_dir, "checkpoints")
        job = self.start(trial, run_dir)
        trial.target = "tree"
        rank0 = None
        try:
            if trial.kind == "shard":
                caught = self.wait_for(job, lambda: len(complete(ckpt)) >= 2, poll=0.02)
                time.sleep(self.rng.uniform(0, 1.0))
            else:
                started = self.wait_for(job, lambda: bool(logged(run_dir)), poll=0.05)
                rank0 = job.rank_pid(0) if trial.moment == "publish" else None
                caught = started and self.reach_moment(job, run_dir, trial.moment)
            if rank0 is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rank0, signal.SIGSTOP)
            observed = phase(ckpt)
            before = complete(ckpt)
            alive = job.alive()
            job.kill()
        finally:
            if job.alive():
                job.kill()
        if trial.kind != "shard":
            trial.observed = observed if alive else "ended"
        return before, caught and alive

    def rerun(self, trial: Trial, run_dir: str, before: list[int], expect_from: int | None):
        job = self.start(trial, run_dir)
        code = job.wait()
        if code is None:
            trial.problems.append(f"rerun still running after {COMMAND_TIMEOUT_S} s")
            job.kill()
        found = RESUMED.search(job.output())
        resumed = int(found.group(2)) if found else None
        trial.resumed_from = str(resumed) if resumed is not None else "start"
        if resumed != expect_from:
            trial.problems.append(f"rerun resumed from {resumed}, expected {expect_from}")
        self.finish(trial, run_dir, code, before)
        return job

    def tree(self, trial: Trial, run_dir: str) -> None:
        before, caught = self.kill_tree(trial, run_dir)
        self.resume_after_kill(trial, run_dir, before, caught)

    def resume_after_kill(self, trial: Trial, run_dir: str, before: list[int], caught: bool):
        """The same command again: it must resume from `latest` and finish (without a
        `latest`, e.g. killed before the first save published it: from the newest complete
        checkpoint)."""
        if not caught:
            trial.problems.append(f"the run ended before the moment ({trial.moment})")
        ckpt = os.path.join(run_dir, "checkpoints")
        named = latest(ckpt)
        self.rerun(
            trial, run_dir, before, named if named is not None else max(before, default=None)
        )
        if not trial.problems:
            trial.outcome = "resumed"

    def shard(self, trial: Trial, run_dir: str) -> None:
        ckpt = os.path.join(run_dir, "checkpoints")
        self.kill_tree(trial, run_dir)
        named = latest(ckpt)
        before = complete(ckpt)
        older = [it for it in before if named is not None and it < named]
        if named is None or not older:
            trial.problems.append(f"no two complete checkpoints to damage: {before}")
            return
        path = os.path.join(ckpt, f"iter_{named:07d}")
        shards = sorted(n for n in os.listdir(path) if n.endswith(".distcp"))
        victim = os.path.join(path, self.rng.choice(shards))
        size = os.path.getsize(victim)
        if trial.moment == "truncate":
            new_size = self.rng.randint(0, size - 1)
            os.truncate(victim, new_size)
            trial.observed = f"{size}->{new_size} B"
        elif trial.moment == "delete":
            os.remove(victim)
            trial.observed = f"{size} B gone"
        else:
            offset = self.rng.randint(0, max(0, size - 4096))
            with open(victim, "r+b") as f:
                f.seek(offset)
                f.write(self.rng.randbytes(min(4096, size - offset)))
            trial.observed = f"4 KiB at {offset}"
        trial.target = f"iter_{named:07d}/{os.path.basename(victim)}"
        job = self.rerun(trial, run_dir, before, older[-1])
        out = job.output()
        if "falling back to" not in out:
            trial.problems.append("no fallback message")
        if not os.path.isdir(path + ".corrupt"):
            trial.problems.append(f"{os.path.basename(path)} not set aside as .corrupt")
        if not trial.problems:
            trial.outcome = "resumed"

    def launcher(self, trial: Trial, run_dir: str) -> None:
        """kill -9 of the launcher alone: nothing of the job may run on, the rerun resumes."""
        ckpt = os.path.join(run_dir, "checkpoints")
        job = self.start(trial, run_dir)
        trial.target = "launcher"
        try:
            started = self.wait_for(job, lambda: bool(logged(run_dir)), poll=0.05)
            caught = started and self.reach_moment(job, run_dir, trial.moment)
            trial.observed = phase(ckpt)
            before = complete(ckpt)
            job.proc.send_signal(signal.SIGKILL)
            job.proc.wait()
            job.log.close()
            _gone, alive = psutil.wait_procs(tagged(job.tag), timeout=ORPHAN_GRACE_S)
            if alive:
                names = ", ".join(" ".join(p.cmdline()[1:4]) for p in alive if _live(p))
                trial.problems.append(
                    f"{len(alive)} processes outlived the launcher by {ORPHAN_GRACE_S} s: {names}"
                )
        finally:
            kill_tagged(job.tag)
        self.resume_after_kill(trial, run_dir, before, caught)

    def shared(self, trial: Trial, run_dir: str) -> None:
        """A second run dir with the first one's checkpoint.dir: refused, the first unharmed."""
        ckpt = os.path.join(run_dir, "checkpoints")
        shared = (f"checkpoint.dir={ckpt}",)
        first = self.start(trial, run_dir, shared)
        trial.target = "2nd run dir"
        try:
            if not self.wait_for(first, lambda: bool(logged(run_dir)), poll=0.05):
                trial.problems.append("the first run never logged a step")
            second = self.start(trial, run_dir + "_second", shared)
            code = second.wait()
            trial.observed = f"2nd exit {code}"
            if code != 1 or "is in use by another job" not in second.output():
                trial.problems.append(f"the second run was not refused (exit code {code})")
            before = complete(ckpt)
            self.finish(trial, run_dir, first.wait(), before)
        finally:
            if first.alive():
                first.kill()
        if not trial.problems:
            trial.outcome = "refused"

    def run_trial(self, number: int) -> Trial:
        kind = self.rng.choice(self.args.kinds)
        if kind == "shared":
            moment = "step"
        else:
            moment = self.rng.choice(DAMAGES if kind == "shard" else KINDS[kind])
        trial = Trial(number, kind, moment)
        run_dir = os.path.join(self.workdir, f"trial{number:02d}")
        started = time.monotonic()
        try:
            run = {
                "rank": self.kill_rank,
                "tree": self.tree,
                "shard": self.shard,
                "launcher": self.launcher,
                "shared": self.shared,
            }[kind]
            run(trial, run_dir)
        except Exception as err:  # a broken trial is a failed trial, not a broken benchmark
            trial.problems.append(f"{type(err).__name__}: {err}")
            trial.outcome = "failed"
        finally:
            self.cleanup()
        if trial.problems:
            trial.outcome = "failed"
        trial.seconds = time.monotonic() - started
        return trial


# --- output -------------------------------------------------------------------------------

COLUMNS = (
    "#",
    "fault",
    "moment",
    "target",
    "at the fault",
    "cmds",
    "resumed",
    "result",
    "lost",
    "s",
)


def row(t: Trial) -> tuple[str, ...]:
    return (
        str(t.number),
        t.kind,
        t.moment,
        t.target,
        t.observed,
        str(t.commands),
        t.resumed_from,
        t.outcome,
        str(len(t.lost)),
        f"{t.seconds:.0f}",
    )


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    for r in [COLUMNS, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def summary(trials: list[Trial], seconds: float) -> bool:
    outcomes = ("self-healed", "resumed", "refused", "failed")
    count = {o: sum(t.outcome == o for t in trials) for o in outcomes}
    lost = sum(len(t.lost) for t in trials)
    print()
    print(
        f"trials {len(trials)}, self-healed {count['self-healed']}, resumed {count['resumed']}, "
        f"refused {count['refused']}, failed {count['failed']}, lost checkpoints {lost} "
        f"(must be 0); {seconds:.0f} s"
    )
    for kind in ALL_KINDS:
        mine = [t for t in trials if t.kind == kind]
        if mine:
            ok = sum(t.outcome != "failed" for t in mine)
            moments = ", ".join(sorted({t.moment for t in mine}))
            print(f"  {kind:5s}: {ok}/{len(mine)} passed ({moments})")
    for t in trials:
        for problem in t.problems:
            print(f"  trial {t.number}: {problem}")
        for note in t.notes:
            print(f"  trial {t.number} (note): {note}")
    print(
        "Compared with: Megatron-LM without nvidia-resiliency-ext restarts nothing "
        "(every fault here needs a person) and stops on a damaged checkpoint."
    )
    return count["failed"] == 0 and lost == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iters", type=int, default=12, help="train.train_iters of every run")
    parser.add_argument("--save-interval", type=int, default=3)
    parser.add_argument(
        "--kinds",
        type=lambda s: s.split(","),
        default=list(ALL_KINDS),
        help=f"the faults to draw from, comma-separated (default: {','.join(ALL_KINDS)})",
    )
    parser.add_argument("--workdir", help="where the runs go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    parser.add_argument(
        "--async-save",
        action="store_true",
        help="periodic checkpoints written in the background (checkpoint.async_save=true)",
    )
    args = parser.parse_args()
    unknown = set(args.kinds) - set(ALL_KINDS)
    if unknown:
        parser.error(
            f"--kinds: {', '.join(sorted(unknown))}: expected some of {','.join(ALL_KINDS)}"
        )
    if args.iters < 2 * args.save_interval + 2:
        parser.error("--iters must leave room for two checkpoints and a step after them")
    workdir = args.workdir or tempfile.mkdtemp(prefix="chaos-")
    os.makedirs(workdir, exist_ok=True)
    bench = Bench(args, workdir)
    started = time.monotonic()
    trials: list[Trial] = []
    try:
        bench.prepare()
        print(
            f"{args.trials} trials, seed {args.seed}, {args.iters} iterations, a checkpoint "
            f"every {args.save_interval}{' (background writes)' if args.async_save else ''}, "
            f"keep_last {KEEP_LAST}, 2 CPU ranks; runs in {workdir}"
        )
        for number in range(1, args.trials + 1):
            trial = bench.run_trial(number)
            trials.append(trial)
            print(
                f"trial {number}: {trial.kind} {trial.moment} {trial.target} -> {trial.outcome} "
                f"({trial.seconds:.0f} s){'; ' if trial.problems else ''}{'; '.join(trial.problems)}",
                flush=True,
            )
    except KeyboardInterrupt:
        print("interrupted; the trials so far:")
    finally:
        bench.cleanup()
    print()
    print_table([row(t) for t in trials])
    ok = summary(trials, time.monotonic() - started)
    if not args.keep and not args.workdir and ok:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok and trials else 1


if __name__ == "__main__":
    sys.exit(main())
