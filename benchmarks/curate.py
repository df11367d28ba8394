"""Benchmark: `chatbaker curate` on the planted raw sample: what each rule removes, and how fast.

    .venv/bin/python benchmarks/curate.py [--copies 4] [--workdir DIR]

Part 1, per filter precision and recall against the ground truth of the raw
sample (data/curate/raw_sample.py), each block applied on its own:
language routing (other-language documents), quality filters (junk),
boilerplate lines (planted lines), PII per kind (planted strings; look-alikes
with wrong check digits must survive).
Part 2, dedup in the whole job: exact duplicates, and near-dup recall at a
true word-5-gram Jaccard >= 0.8 (every pair of documents entering MinHash,
compared exactly), with the documents it removed that resemble nothing
(max Jaccard < 0.5: false removals) and those between 0.5 and 0.8 (MinHash's
S-curve with 14 bands of 8 hashes is at 50% near Jaccard 0.72, by design).
Part 3, throughput: the whole job as 1 task, documents per second per core
(the job's CPU seconds, children included), against a plain single-process
Python loop applying the same blocks and the same dedup (in-memory hash set,
in-memory MinHash bands) to the same files; then 1 vs 2 local tasks (wall).
Part 4, tokenising: `chatbaker preprocess --tasks N` (a datatrove job)
against the single-process `chatbaker preprocess`, from benchmarks/preprocess.py.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from datatrove.data import Document

from chatbaker_megatron.config.curate import CurateConfig
from chatbaker_megatron.data.curate import dedup
from chatbaker_megatron.data.curate.cli import compose_curate, curate
from chatbaker_megatron.data.curate.language import LanguageRouter
from chatbaker_megatron.data.curate.normalize import normalize_text
from chatbaker_megatron.data.curate.pii import PII_KINDS, TOKENS, PIIScrubber
from chatbaker_megatron.data.curate.quality import (
    BoilerplateLines,
    KoreanParticleFilter,
    gopher_filters,
)
from chatbaker_megatron.data.curate.raw_sample import make_raw_sample, shingles


def pr(tp: int, fp: int, fn: int) -> str:
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return f"precision {precision:6.1%}  recall {recall:6.1%}  (tp {tp}, fp {fp}, fn {fn})"


def raw_documents(folder: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    docs = {}
    with open(folder / "raw_a.jsonl", encoding="utf-8") as f:
        docs.update((d["id"], d) for d in map(json.loads, f))
    with gzip.open(folder / "raw_b.jsonl.gz", "rt", encoding="utf-8") as f:
        docs.update((d["id"], d) for d in map(json.loads, f))
    docs.update((d["id"], d) for d in pq.read_table(folder / "raw_other.parquet").to_pylist())
    return docs


def quality_steps(cfg: CurateConfig) -> list:
    q = cfg.quality
    return [
        *gopher_filters("ko", q.ko),
        *gopher_filters("en", q.en),
        KoreanParticleFilter(q.ko_min_particle_ratio, q.ko_particle_min_words),
    ]


def passes(steps: list, doc: Document) -> bool:
    return all(step.filter(doc) is True for step in steps)


def per_filter(cfg: CurateConfig, docs: dict[str, dict], truth: dict[str, dict]) -> None:
    print("== Part 1: each block on its own vs the planted truth")
    router = LanguageRouter(cfg.language.ko_min_hangul, cfg.language.en_min_latin, keep_other=False)
    tp = fp = fn = 0
    routed: dict[str, Document] = {}
    for doc_id, raw in docs.items():
        doc = Document(text=normalize_text(raw["text"]), id=doc_id)
        dropped = router.filter(doc) is not True
        planted = truth[doc_id]["kind"] == "other_language"
        tp, fp, fn = (
            tp + (dropped and planted),
            fp + (dropped and not planted),
            fn + (planted and not dropped),
        )
        if not dropped:
            routed[doc_id] = doc
    junk_no_letters = sum(truth[k]["kind"] == "junk" for k in docs if k not in routed)
    print(
        f"language routing, drops other-language docs:  {pr(tp - 0, fp - junk_no_letters, fn)}"
        f"  [+{junk_no_letters} junk docs without letters]"
    )

    steps = quality_steps(cfg)
    tp = fp = fn = 0
    for doc_id, doc in routed.items():
        dropped = not passes(steps, doc)
        planted = truth[doc_id]["kind"] == "junk"
        tp, fp, fn = (
            tp + (dropped and planted),
            fp + (dropped and not planted),
            fn + (planted and not dropped),
        )
    print(f"quality filters, drop junk docs:              {pr(tp, fp, fn)}")

    remover = BoilerplateLines()
    tp = fp = fn = 0
    for doc_id, raw in docs.items():
        before = raw["text"].split("\n")
        after = {line.strip() for line in remover.format(raw["text"]).split("\n")}
        removed = [line for line in before if line.strip() and line.strip() not in after]
        planted = set(truth[doc_id].get("lines", ()))
        tp += sum(line in planted for line in removed)
        fp += sum(line not in planted for line in removed)
        fn += sum(line not in removed for line in planted)
    print(f"boilerplate lines, remove planted lines:      {pr(tp, fp, fn)}")

    scrubber = PIIScrubber(list(PII_KINDS))
    counts = {kind: [0, 0, 0] for kind in PII_KINDS}
    clean_hits = 0
    for doc_id, raw in docs.items():
        info = truth[doc_id]
        scrubbed = scrubber.format(raw["text"])
        if info["kind"] != "pii":
            clean_hits += sum(scrubbed.count(t) - raw["text"].count(t) for t in TOKENS.values())
            continue
        for text, kind in info["pii"]:
            counts[kind][0 if text not in scrubbed else 2] += 1
        for look_alike in info["look_alikes"]:
            if look_alike not in scrubbed:
                kind = "rrn" if look_alike[6:7] == "-" and len(look_alike) == 14 else "other"
                counts.setdefault(kind, [0, 0, 0])[1] += 1
    for kind, (tp, fp, fn) in counts.items():
        print(f"PII {kind:<6} replaced (look-alikes must stay): {pr(tp, fp, fn)}")
    print(
        f"PII found in the other documents: {clean_hits} (the bills' real contact lines: phone + e-mail)"
    )


def dedup_quality(output: Path, truth: dict[str, dict]) -> None:
    print("\n== Part 2: dedup in the whole job (true Jaccard of word 5-grams)")

    def read(folder: str) -> dict[str, str]:
        found = {}
        for path in sorted((output / "work" / folder).glob("*.jsonl.gz")):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                found.update((d["id"], d["text"]) for d in map(json.loads, f))
        return found

    filtered, unique = read("filtered"), read("unique")
    kept = set()
    for path in output.glob("*/*.jsonl"):
        with open(path, encoding="utf-8") as f:
            kept.update(d["id"] for d in map(json.loads, f))
    texts = defaultdict(list)
    for doc_id, text in filtered.items():
        texts[text].append(doc_id)
    exact_groups = [ids for ids in texts.values() if len(ids) > 1]
    exact_left = sum(len([i for i in ids if i in unique]) > 1 for ids in exact_groups)
    print(
        f"exact: {len(exact_groups)} groups of identical texts entered, {exact_left} still duplicated after it"
    )

    ids = sorted(unique)
    sets = {i: shingles(unique[i]) for i in ids}
    best = dict.fromkeys(ids, 0.0)
    pairs = []
    for a_i, a in enumerate(ids):
        for b in ids[a_i + 1 :]:
            x, y = sets[a], sets[b]
            if not x or not y:
                continue
            j = len(x & y) / len(x | y)
            best[a], best[b] = max(best[a], j), max(best[b], j)
            if j >= 0.8:
                pairs.append((a, b))
    caught = sum(not (a in kept and b in kept) for a, b in pairs)
    removed = [i for i in ids if i not in kept]
    false = [i for i in removed if best[i] < 0.5]
    between = [i for i in removed if 0.5 <= best[i] < 0.8]
    print(
        f"near-dup recall at Jaccard >= 0.8: {caught}/{len(pairs)} pairs = {caught / max(1, len(pairs)):.1%}"
    )
    print(
        f"removed by MinHash: {len(removed)} of {len(ids)}; resembling nothing (max J < 0.5, false): "
        f"{len(false)} = {len(false) / len(ids):.2%}; at 0.5 <= J < 0.8: {len(between)}"
    )
    planted = [k for k, v in truth.items() if v["kind"] == "near_dup" and v["jaccard"] >= 0.8]
    planted_caught = sum(not (k in kept and truth[k]["of"] in kept) for k in planted)
    print(f"planted near-dups at J >= 0.8 caught: {planted_caught}/{len(planted)}")


def plain_loop(cfg: CurateConfig, folder: Path) -> int:
    """The same blocks and dedup rules in one Python loop, without datatrove's engine."""
    import hashlib

    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature

    router = LanguageRouter(
        cfg.language.ko_min_hangul, cfg.language.en_min_latin, cfg.language.keep_other
    )
    boiler, steps = BoilerplateLines(), quality_steps(cfg)
    scrubber = PIIScrubber(cfg.pii.kinds, cfg.pii.rrn_require_checksum, cfg.pii.ip_public_only)
    signer = dedup.minhash_signature(str(folder / "unused"), cfg.dedup)
    assert isinstance(signer, MinhashDedupSignature)
    seen, bands, out, n = set(), set(), [], 0
    for path in sorted(folder.glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    raw = json.loads(line)
                    text = raw["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
                if not isinstance(text, str) or not text.strip():
                    continue
                n += 1
                doc = Document(text=normalize_text(text), id=str(raw.get("id")))
                if router.filter(doc) is not True:
                    continue
                doc.text = boiler.format(doc.text)
                if not passes(steps, doc):
                    continue
                doc.text = scrubber.format(doc.text)
                digest = hashlib.sha1(doc.text.encode()).digest()
                if digest in seen:
                    continue
                seen.add(digest)
                sh = signer.get_shingles(doc.text)
                if sh.size:
                    sig = [(i, tuple(b)) for i, b in enumerate(signer.get_signature(sh))]
                    if any(b in bands for b in sig):
                        continue
                    bands.update(sig)
                out.append(doc)
    return n


def cpu_seconds() -> float:
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def throughput(folder: Path, work: Path) -> None:
    print("\n== Part 3: throughput (documents read per second)")
    chars: dict[int, int] = {}

    def job(tasks: int) -> tuple[int, float, float]:
        output = work / f"throughput_{tasks}"
        shutil.rmtree(output, ignore_errors=True)
        cfg = compose_curate(
            [
                f"input={folder}",
                f"output={output}",
                f"executor.tasks={tasks}",
                f"executor.workers={tasks}",
                "progress=false",
            ]
        )
        wall, cpu = time.perf_counter(), cpu_seconds()
        report = curate(cfg)
        chars[tasks] = report["checkpoints"][0]["chars"]
        return report["checkpoints"][0]["docs"], time.perf_counter() - wall, cpu_seconds() - cpu

    docs, wall1, cpu1 = job(1)
    cfg = compose_curate([f"input={folder}", "output=unused"])
    wall, cpu = time.perf_counter(), cpu_seconds()
    plain_docs = plain_loop(cfg, folder)
    plain_wall, plain_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    print(
        f"curate, 1 task:        {docs:,} docs, {wall1:6.1f} s wall, {cpu1:6.1f} CPU s -> "
        f"{docs / cpu1:7.1f} docs/s, {chars[1] / cpu1 / 1e3:6.1f} K chars/s per core"
    )
    print(
        f"plain loop, 1 process: {plain_docs:,} docs, {plain_wall:6.1f} s wall, {plain_cpu:6.1f} CPU s -> "
        f"{plain_docs / plain_cpu:7.1f} docs/s per core (datatrove costs x{cpu1 / plain_cpu * plain_docs / docs:.2f} CPU)"
    )
    # Pool workers' CPU time is not reaped into RUSAGE_CHILDREN: compare wall times.
    docs2, wall2, _ = job(2)
    print(
        f"curate, 2 tasks:       {docs2:,} docs, {wall2:6.1f} s wall -> "
        f"speed-up x{wall1 / wall2:.2f} over 1 task ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
    )


def tokenising(curated: Path, work: Path) -> None:
    """H4's comparison (benchmarks/tokenize_scaleout.py) on the curated shards."""
    print("\n== Part 4: tokenising the curated shards, datatrove job vs single-process preprocess")
    import importlib.util

    from chatbaker_megatron.data.tokenizer.train import train_tokenizer

    path = Path(__file__).resolve().parent / "tokenize_scaleout.py"
    if not path.is_file():
        print(f"{path.name} is missing: no tokenising comparison in this run")
        return
    spec = importlib.util.spec_from_file_location("tokenize_scaleout", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shards = [str(p) for p in sorted(curated.glob("*/*.jsonl"))]
    tokenizer = work / "tokenizer"
    train_tokenizer(shards, tokenizer, vocab_size=4096, heldout_fraction=0.0, show_progress=False)
    rows = module.measure(shards, str(tokenizer), str(work / "tokenize"))
    keys = list(rows[0]) if rows else []
    print(" | ".join(keys))
    for row in rows:
        print(
            " | ".join(f"{row[k]:.2f}" if isinstance(row[k], float) else str(row[k]) for k in keys)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of the raw sample for part 3")
    parser.add_argument("--workdir", help="keep the files here (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        raw = work / "raw"
        shutil.rmtree(raw, ignore_errors=True)
        truth = make_raw_sample(str(raw))
        cfg = compose_curate([f"input={raw}", f"output={work / 'out'}", "progress=false"])
        per_filter(cfg, raw_documents(raw), truth)
        shutil.rmtree(work / "out", ignore_errors=True)
        curate(cfg)
        dedup_quality(work / "out", truth)
        big = work / "big"
        shutil.rmtree(big, ignore_errors=True)
        big.mkdir()
        for copy in range(args.copies):
            for name in ("raw_a.jsonl", "raw_b.jsonl.gz"):
                shutil.copy(raw / name, big / f"{copy}_{name}")
        throughput(big, work)
        tokenising(work / "out", work)


if __name__ == "__main__":
    main()
