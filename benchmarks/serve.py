"""Serving benchmark: 1, 4 and 16 concurrent streaming clients against `chatbaker serve`,
side by side with one request at a time through the existing Generator, in the same run.

    .venv/bin/python benchmarks/serve.py [--checkpoint runs/demo/checkpoints] [--requests 32]
                                         [--max-tokens 64] [--clients 1 4 16]

The model is the `make demo` checkpoint (exported to a temporary HF folder,
as the server itself does), or with `--random` a model of the demo's shape
(conf/model/tiny.yaml) with random weights and the tiny test tokenizer.
The server runs as a real `chatbaker serve` subprocess on a loopback port;
each client is an asyncio task streaming /v1/completions over HTTP (httpx)
and reading the SSE lines. Every request i has its own prompt and seed
(temperature 1), so the server's reply to i must equal the baseline's reply
to i: "nothing lost or cut off" is checked text for text and token for
token (usage), and every stream must end with a finish_reason and [DONE].

Printed per setting: requests/s, output tokens/s, p50/p99 time to first
token, p50/p99 per-token latency (the gaps after the first token), and the
throughput ratio to the one-at-a-time baseline, run before and after the
server (the machine is shared; the faster run counts). Baseline and server get the
same torch thread count (--threads, 1 by default: on 2 cores the server's
HTTP side needs the other one, and more intra-op threads than free cores
slow a small model down).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "대한민국의 수도는",
    "옛날 옛적에 한 마을에",
    "The capital of Korea is",
    "오늘 날씨가 좋아서",
    "한국어와 영어를 함께",
    "Once upon a time,",
    "서울에서 부산까지",
    "인공지능은",
]


@dataclass
class Timing:
    text: str = ""
    tokens: int = 0
    start: float = 0.0
    first: float | None = None
    last: float | None = None
    finish: str | None = None
    done: bool = False

    def arrived(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now


@dataclass
class Result:
    label: str
    wall: float
    timings: list[Timing] = field(default_factory=list)

    def row(self, baseline_tps: float | None) -> str:
        tokens = sum(t.tokens for t in self.timings)
        ttft = [t.first - t.start for t in self.timings if t.first is not None]
        gaps = [
            (t.last - t.first) / (t.tokens - 1)
            for t in self.timings
            if t.tokens > 1 and t.first is not None
        ]
        tps = tokens / self.wall
        ratio = f"{tps / baseline_tps:5.2f}x" if baseline_tps else "    - "
        return (
            f"{self.label:<24} {len(self.timings) / self.wall:7.2f} {tps:9.1f} {ratio}"
            f" {pct(ttft, 50):8.1f} {pct(ttft, 99):8.1f} {pct(gaps, 50):8.2f} {pct(gaps, 99):8.2f}"
        )


def pct(values: list[float], q: int) -> float:
    """The q-th percentile in milliseconds (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def random_demo_model(directory: Path) -> Path:
    """An HF folder of the demo model's shape with random weights and the tiny tokenizer."""
    import dataclasses

    from omegaconf import OmegaConf

    from chatbaker_megatron.config.model import ModelConfig
    from tests.support import tiny_checkpoints

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    tiny = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/tiny.yaml"))
    shape = ModelConfig(**{k: v for k, v in tiny.items() if k in fields and k != "kernels"})
    tokenizer = tiny_checkpoints.make_tokenizer(directory / "tokenizer")
    return tiny_checkpoints.random_hf_model(directory / "hf", tokenizer, model=shape)


def export_demo(checkpoint: str, directory: Path) -> Path:
    from chatbaker_megatron.convert.export_hf import export_hf

    return export_hf(checkpoint, directory / "hf", progress=False).output


def baseline(hf_dir: Path, requests: list[dict]) -> tuple[Result, list[Timing]]:
    """One request at a time through inference.generator.Generator (what `chatbaker generate` runs)."""
    from chatbaker_megatron.inference.backends import HFBackend
    from chatbaker_megatron.inference.generator import Generator
    from chatbaker_megatron.inference.sampling import SamplingConfig

    backend = HFBackend(hf_dir)
    generator = Generator(backend)
    timings = []
    start = time.perf_counter()
    for request in requests:
        timing = Timing(start=time.perf_counter())
        sampling = SamplingConfig(
            temperature=1.0,
            top_p=1.0,
            repetition_penalty=1.0,
            max_new_tokens=request["max_tokens"],
            seed=request["seed"],
        )
        result = generator.generate(
            backend.tokenizer.encode(request["prompt"]),
            sampling,
            on_text=lambda _piece, t=timing: t.arrived(),
        )
        timing.text, timing.tokens = result.text, len(result.token_ids)
        timings.append(timing)
    return Result("baseline", time.perf_counter() - start, timings), timings


async def stream_one(
    client: httpx2.AsyncClient, base_url: str, model: str, request: dict
) -> Timing:
    timing = Timing(start=time.perf_counter())
    body = {
        "model": model,
        **request,
        "temperature": 1.0,
        "top_p": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with client.stream("POST", f"{base_url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                timing.done = True
                break
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                timing.tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                if choice["text"]:
                    timing.arrived()
                    timing.text += choice["text"]
                if choice["finish_reason"]:
                    timing.finish = choice["finish_reason"]
    return timing


def concurrent(base_url: str, model: str, requests: list[dict], clients: int) -> Result:
    """`clients` concurrent streams, each client sending its share of the requests one
    after another.

    The clients are asyncio tasks on one thread of this process, sharing one HTTP
    client (a keep-alive connection each): they share the 2 cores with the server,
    and 16 threads contending for this process's GIL cost several times the CPU
    of one event loop reading the same streams.
    """
    timings: list[Timing | None] = [None] * len(requests)

    async def client(session: httpx2.AsyncClient, worker: int) -> None:
        for i in range(worker, len(requests), clients):
            timings[i] = await stream_one(session, base_url, model, requests[i])

    async def run_all() -> float:
        limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
        # Made before the clock starts: an httpx client builds an SSL context (tens of ms).
        async with httpx2.AsyncClient(timeout=300, limits=limits) as session:
            start = time.perf_counter()
            await asyncio.gather(*(client(session, w) for w in range(clients)))
            return time.perf_counter() - start

    wall = asyncio.run(run_all())
    return Result(f"server, {clients:>2} clients", wall, timings)


def check_complete(result: Result, reference: list[Timing]) -> list[str]:
    problems = []
    for i, (got, want) in enumerate(zip(result.timings, reference)):
        if not got.done or got.finish is None:
            problems.append(f"{result.label}: request {i} ended without finish_reason/[DONE]")
        elif got.text != want.text or got.tokens != want.tokens:
            problems.append(
                f"{result.label}: request {i}: {got.tokens} tokens {got.text[:40]!r}..., "
                f"baseline {want.tokens} tokens {want.text[:40]!r}..."
            )
    return problems


def start_server(hf_dir: Path, max_batch: int, threads: int) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "chatbaker_megatron.cli", "serve", "--hf", str(hf_dir),
        "--model-name", "bench", "--port", str(port), "--max-batch", str(max_batch),
        "--max-queue", "256", "--repetition-penalty", "1.0", "--threads", str(threads),
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx2.get(f"{base_url}/health", timeout=1).status_code == 200:
                return server, base_url
        except httpx2.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not answer /health within 120 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default="runs/demo/checkpoints")
    source.add_argument("--random", action="store_true", help="random weights, demo shape")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads, baseline and server alike"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from chatbaker_megatron import notices

    notices.hide_known_notices()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        if args.random or not (Path(args.checkpoint) / "latest").is_file():
            print("model: the demo's shape (conf/model/tiny.yaml), random weights")
            hf_dir = random_demo_model(Path(tmp))
        else:
            print(f"model: {args.checkpoint} (make demo), exported to a temporary HF folder")
            hf_dir = export_demo(args.checkpoint, Path(tmp))
        requests = [
            {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.max_tokens, "seed": i}
            for i in range(args.requests)
        ]
        print(
            f"{args.requests} requests of up to {args.max_tokens} tokens, sampled (seed = i), "
            f"{args.threads} torch thread(s) for the baseline and the server"
        )
        before, reference = baseline(hf_dir, requests)
        server, base_url = start_server(hf_dir, max(args.clients), args.threads)
        try:
            results = [concurrent(base_url, "bench", requests, c) for c in args.clients]
        finally:
            server.terminate()
            server.wait(timeout=30)
        # Run again after the server: the machine is shared, and the ratio is taken
        # against the faster of the two baseline runs.
        after, _ = baseline(hf_dir, requests)
    base = min(before, after, key=lambda r: r.wall)
    base_tps = sum(t.tokens for t in base.timings) / base.wall
    print(
        f"\n{'':<24} {'req/s':>7} {'out tok/s':>9} {'vs 1x':>6} {'TTFT p50':>8} {'TTFT p99':>8}"
        f" {'tok p50':>8} {'tok p99':>8}   (latencies in ms)"
    )
    for run, label in ((before, "baseline, before"), (after, "baseline, after")):
        run.label = label + (" *" if run is base else "")
        print(run.row(None))
    for result in results:
        print(result.row(base_tps))
    problems = [p for result in results for p in check_complete(result, reference)]
    for problem in problems:
        print(f"MISMATCH {problem}")
    total = sum(t.tokens for t in reference)
    print("* the faster baseline run, the one the ratios are taken against")
    print(
        f"\nchecked: {len(results)} x {len(requests)} streamed replies equal the baseline's "
        f"({total} tokens each round), all ended with finish_reason and [DONE]"
        if not problems
        else f"\n{len(problems)} replies lost, cut off or different"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
