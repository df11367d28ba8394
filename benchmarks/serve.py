"""Serving benchmark: 1, 4 and 16 concurrent streaming clients against `chatbaker serve`,
side by side with one request at a time through the existing Generator, in the same run.

    .venv/bin/python benchmarks/serve.py [--checkpoint runs/demo/checkpoints] [--requests 32]
                                         [--max-tokens 64] [--clients 1 4 16]
                                         [--peer-url URL [--peer-model M] | --peer-transformers]
                                         [--rounds N] [--engine process|thread]

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

With a peer (any OpenAI-compatible API base `--peer-url http://host:port/v1`,
or `--peer-transformers`: `transformers serve --continuous-batching` started
here on the same HF folder, with the same thread count), the requests are
greedy (temperature 0) for everyone, the baseline included, and the same
clients run the same requests against our server and the peer, alternating
which goes first, for `--rounds` rounds at each client count. Printed per
target and client count, over all rounds: output tokens/s and TTFT p50/p99,
the ratios ours/peer, and whether the peer's greedy text equals ours,
request for request.
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

    def tokens_per_s(self) -> float:
        return sum(t.tokens for t in self.timings) / self.wall

    def ttft(self) -> list[float]:
        return [t.first - t.start for t in self.timings if t.first is not None]

    @staticmethod
    def merged(label: str, runs: list[Result]) -> Result:
        """Several rounds as one: their walls added, their timings together."""
        timings = [t for run in runs for t in run.timings]
        return Result(label, sum(run.wall for run in runs), timings)

    def row(self, baseline_tps: float | None) -> str:
        ttft = self.ttft()
        gaps = [
            (t.last - t.first) / (t.tokens - 1)
            for t in self.timings
            if t.tokens > 1 and t.first is not None
        ]
        tps = self.tokens_per_s()
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
            greedy=request["temperature"] == 0,
            temperature=request["temperature"] or 1.0,
            top_p=1.0,
            repetition_penalty=1.0,
            max_new_tokens=request["max_tokens"],
            seed=request.get("seed"),
        )
        result = generator.generate(
            backend.tokenizer.encode(request["prompt"]),
            sampling,
            on_text=lambda _piece, t=timing: t.arrived(),
        )
        timing.text, timing.tokens = result.text, len(result.token_ids)
        timings.append(timing)
    return Result("baseline", time.perf_counter() - start, timings), timings


async def stream_one(client: httpx2.AsyncClient, api: str, model: str, request: dict) -> Timing:
    """One streamed /completions request to the API base `api` (…/v1)."""
    timing = Timing(start=time.perf_counter())
    body = {
        "model": model,
        **request,
        "top_p": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    pieces = 0
    async with client.stream("POST", f"{api}/completions", json=body) as response:
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
                if choice.get("text"):
                    timing.arrived()
                    timing.text += choice["text"]
                    pieces += 1
                if choice.get("finish_reason"):
                    timing.finish = choice["finish_reason"]
    # A peer that reports no usage: count its text chunks (one token each, as streamed).
    timing.tokens = timing.tokens or pieces
    return timing


def concurrent(
    api: str, model: str, requests: list[dict], clients: int, who: str = "server"
) -> Result:
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
            timings[i] = await stream_one(session, api, model, requests[i])

    async def run_all() -> float:
        limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
        # Made before the clock starts: an httpx client builds an SSL context (tens of ms).
        async with httpx2.AsyncClient(timeout=300, limits=limits) as session:
            start = time.perf_counter()
            await asyncio.gather(*(client(session, w) for w in range(clients)))
            return time.perf_counter() - start

    wall = asyncio.run(run_all())
    return Result(f"{who}, {clients:>2} clients", wall, timings)


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


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(process: subprocess.Popen, url: str, what: str, within: float = 180) -> None:
    """Until GET url answers 200; RuntimeError with the process's last words if it exits."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx2.get(url, timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{what} did not answer {url} within {within:.0f} s")


def start_server(
    hf_dir: Path, max_batch: int, threads: int, engine: str
) -> tuple[subprocess.Popen, str]:
    """`chatbaker serve` on the folder: (its process, its API base …/v1)."""
    port = free_port()
    command = [
        sys.executable, "-m", "chatbaker_megatron.cli", "serve", "--hf", str(hf_dir),
        "--model-name", "bench", "--port", str(port), "--max-batch", str(max_batch),
        "--max-queue", "256", "--repetition-penalty", "1.0", "--threads", str(threads),
        "--engine", engine,
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(server, f"http://127.0.0.1:{port}/health", "chatbaker serve")
    return server, f"http://127.0.0.1:{port}/v1"


def start_transformers(hf_dir: Path, threads: int, rows: int) -> tuple[subprocess.Popen, str]:
    """`transformers serve --continuous-batching` on the folder: (its process, API base).

    Its paged KV cache is sized here (blocks of 32 tokens, room for `rows`
    requests of 128 tokens each, prompt and reply): left to itself it sizes the
    cache from the machine's memory (about 15 GB) and spends ~45 s on the first request."""
    port = free_port()
    blocks = max(64, rows * 128 // 32 * 2)
    command = [
        str(Path(sys.executable).parent / "transformers"), "serve", str(hf_dir),
        "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--continuous-batching",
        "--cb-block-size", "32", "--cb-num-blocks", str(blocks),
        "--cb-max-batch-tokens", str(max(512, rows * 64)),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    peer = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(peer, f"http://127.0.0.1:{port}/v1/models", "transformers serve")
    return peer, f"http://127.0.0.1:{port}/v1"


def peer_model(api: str) -> str:
    """The first model the peer's GET /models lists."""
    return httpx2.get(f"{api}/models", timeout=10).json()["data"][0]["id"]


def same_text(ours: Result, peer: Result) -> list[str]:
    """The requests whose greedy text differs between ours and the peer."""
    return [
        f"{peer.label}: request {i}: {theirs.text[:40]!r}..., ours {mine.text[:40]!r}..."
        for i, (mine, theirs) in enumerate(zip(ours.timings, peer.timings))
        if mine.text != theirs.text
    ]


def side_by_side(
    args: argparse.Namespace, requests: list[dict], api: str, peer: str, model: str
) -> tuple[list[Result], list[Result], list[str]]:
    """Interleaved rounds, ours and the peer alternating which goes first: the merged
    results per client count for each, and the differences in greedy text."""
    ours: dict[int, list[Result]] = {c: [] for c in args.clients}
    theirs: dict[int, list[Result]] = {c: [] for c in args.clients}
    differences = []
    for round_ in range(args.rounds):
        for clients in args.clients:
            order = [(ours, api, "bench", "server"), (theirs, peer, model, "peer")]
            for runs, target, name, who in order[:: 1 if round_ % 2 == 0 else -1]:
                runs[clients].append(concurrent(target, name, requests, clients, who))
            differences += same_text(ours[clients][-1], theirs[clients][-1])
    merged = [
        [Result.merged(runs[c][0].label, runs[c]) for c in args.clients] for runs in (ours, theirs)
    ]
    return merged[0], merged[1], differences


def print_side_by_side(ours: list[Result], theirs: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\n{'clients':>7} | {'ours tok/s':>10} {'peer tok/s':>10} {'ratio':>6} |"
        f" {'ours TTFT p50/p99 ms':>20} {'peer TTFT p50/p99 ms':>20} {'p99 ratio':>9}"
    )
    for clients, mine, peer in zip(args.clients, ours, theirs):
        mine_ttft, peer_ttft = mine.ttft(), peer.ttft()
        print(
            f"{clients:>7} | {mine.tokens_per_s():10.1f} {peer.tokens_per_s():10.1f}"
            f" {mine.tokens_per_s() / peer.tokens_per_s():5.2f}x |"
            f" {pct(mine_ttft, 50):9.1f} / {pct(mine_ttft, 99):8.1f}"
            f" {pct(peer_ttft, 50):9.1f} / {pct(peer_ttft, 99):8.1f}"
            f" {pct(mine_ttft, 99) / pct(peer_ttft, 99):8.2f}x"
        )


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
    peer = parser.add_mutually_exclusive_group()
    peer.add_argument("--peer-url", default=None, help="an OpenAI-compatible API base to compare")
    peer.add_argument(
        "--peer-transformers",
        action="store_true",
        help="start `transformers serve --continuous-batching` on the same folder as the peer",
    )
    parser.add_argument("--peer-model", default=None, help="the peer's model (default: its first)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds with a peer")
    parser.add_argument(
        "--engine",
        choices=("process", "thread"),
        default="process",
        help="the server's --engine: the model in its own process (default) or a thread",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds={args.rounds}: expected >= 1")
    with_peer = bool(args.peer_url or args.peer_transformers)
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
        # Greedy with a peer (its sampler draws other numbers from the same seed).
        sampling = {"temperature": 0} if with_peer else {"temperature": 1.0}
        requests = [
            {
                "prompt": PROMPTS[i % len(PROMPTS)],
                "max_tokens": args.max_tokens,
                **sampling,
                **({} if with_peer else {"seed": i}),
            }
            for i in range(args.requests)
        ]
        print(
            f"{args.requests} requests of up to {args.max_tokens} tokens, "
            + ("greedy" if with_peer else "sampled (seed = i)")
            + f", {args.threads} torch thread(s) for the baseline and the server"
            + (" and the peer" if args.peer_transformers else "")
        )
        before, reference = baseline(hf_dir, requests)
        started = []
        try:
            server, api = start_server(hf_dir, max(args.clients), args.threads, args.engine)
            started.append(server)
            if with_peer:
                if args.peer_transformers:
                    process, peer_api = start_transformers(hf_dir, args.threads, max(args.clients))
                    started.append(process)
                else:
                    peer_api = args.peer_url.rstrip("/")
                model = args.peer_model or peer_model(peer_api)
                print(f"peer: {peer_api} (model {model}), {args.rounds} interleaved round(s)")
                results, peers, differences = side_by_side(args, requests, api, peer_api, model)
            else:
                results = [concurrent(api, "bench", requests, c) for c in args.clients]
        finally:
            for process in started:
                process.terminate()
                process.wait(timeout=30)
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
    if with_peer:
        print_side_by_side(results, peers, args)
        for difference in differences:
            print(f"GREEDY TEXT DIFFERS {difference}")
        print(
            f"greedy text: the peer's equals ours in {args.rounds * len(args.clients)} x "
            f"{len(requests)} requests"
            if not differences
            else f"greedy text: {len(differences)} of the peer's replies differ from ours"
        )
    # With rounds, a result holds each round's replies in turn.
    problems = [
        p
        for result in results
        for p in check_complete(result, reference * (len(result.timings) // len(reference)))
    ]
    for problem in problems:
        print(f"MISMATCH {problem}")
    total = sum(t.tokens for t in reference)
    print("* the faster baseline run, the one the ratios are taken against")
    print(
        f"\nchecked: {sum(len(r.timings) for r in results)} streamed replies equal the baseline's "
        f"({total} tokens each round), all ended with finish_reason and [DONE]"
        if not problems
        else f"\n{len(problems)} replies lost, cut off or different"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
