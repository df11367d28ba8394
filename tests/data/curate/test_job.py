"""The whole job on the raw sample: output per language with input ids, dedup across files and
tasks, the report's arithmetic, resuming, refusing a foreign output folder, bad input."""

import itertools
import json
import os
import re
import shutil

import pytest

from chatbaker_megatron.config.checks import ConfigError
from chatbaker_megatron.data.corpus import BadInputError
from chatbaker_megatron.data.curate.cli import compose_curate, curate, main_argv
from chatbaker_megatron.data.curate.output_folder import MANIFEST


def output_ids(curated) -> dict[str, str]:
    return {r["id"]: lang for lang, records in curated.records().items() for r in records}


def test_output_is_one_folder_per_language_keeping_input_ids(curated, raw_sample):
    records = curated.records()
    assert set(records) == {"ko", "en"}
    ids = [r["id"] for rs in records.values() for r in rs]
    assert len(ids) == len(set(ids)) and set(ids) <= set(raw_sample.truth)
    # Both tasks wrote shards: the input was split between them.
    assert {p.name for p in curated.output.glob("*/*.jsonl")} == {"00000.jsonl", "00001.jsonl"}
    for lang, rs in records.items():
        for r in rs:
            assert raw_sample.truth[r["id"]].get("language", lang) == lang
            assert r["source"] and r["text"]


def test_exact_and_near_duplicates_are_removed_across_files_and_tasks(curated, raw_sample):
    kept = output_ids(curated)
    truth = raw_sample.truth
    exact = [k for k, v in truth.items() if v["kind"] == "exact_dup"]
    near = [k for k, v in truth.items() if v["kind"] == "near_dup" and v["jaccard"] >= 0.8]
    assert len(exact) == 20 and len(near) >= 30
    assert not [k for k in exact if k in kept and truth[k]["of"] in kept]
    # MinHash (14 bands of 8) catches a pair at Jaccard 0.8 with probability 0.92, at 0.9 0.99.
    caught = [k for k in near if not (k in kept and truth[k]["of"] in kept)]
    assert len(caught) / len(near) >= 0.9
    # The pairs straddle files and tasks: the sample puts them in either file at random,
    # and each task read one of them.
    files = {p.name for p in raw_sample.folder.glob("raw_*.jsonl*")}
    assert {"raw_a.jsonl", "raw_b.jsonl.gz"} <= files


def test_the_report_adds_up(curated):
    report = curated.report
    stages = report["stages"]
    assert [s["stage"] for s in stages] == [
        "normalise + language routing",
        "boilerplate + quality filters",
        "PII scrubbing",
        "exact dedup",
        "MinHash near-dedup",
    ]
    for before, after in itertools.pairwise(stages):
        assert before["docs_out"] == after["docs_in"]
    for stage in stages[1:]:
        for key in ("docs_in", "docs_out", "chars_in", "chars_out"):
            assert sum(v[key] for v in stage["by_language"].values()) == stage[key]
    read, final = report["checkpoints"][0], report["output"]
    removed = sum(r["docs"] for r in report["removals"] if not r["reason"].startswith("bad input"))
    assert read["docs"] - final["docs"] == removed
    written = sum(len(rs) for rs in curated.records().values())
    assert final["docs"] == written
    assert report["bad_input"] == {
        "empty": 1,
        "empty-file": 1,
        "invalid-json": 1,
        "missing-key": 1,
        "reencoded_cp949": 1,
    }
    assert report["pii_replaced"].keys() == {"email", "rrn", "card", "phone", "ip"}
    assert report["boilerplate_lines_removed"] >= 45
    with open(curated.output / "report.md", encoding="utf-8") as f:
        assert f"| total | {final['docs']:,} |" in f.read()


def _snapshot(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*.jsonl*")
        if "logs" not in p.parts
    }


def test_a_killed_task_reruns_alone_without_duplicating_output(curated, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(curated.output, output)
    before = _snapshot(output)
    # What a kill -9 during the last data stage's task 1 leaves: no completion
    # marker, a half-written shard, no report.
    last = sorted((output / "logs").iterdir())[-2]
    (last / "completions" / "00001").unlink()
    half = output / "ko" / "00001.jsonl"
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    shutil.rmtree(sorted((output / "logs").iterdir())[-1] / "completions")
    first_stage_marker = output / "logs" / "1_filter" / "completions" / "00000"
    marker_time = first_stage_marker.stat().st_mtime_ns
    cfg = compose_curate(
        [o for o in curated.overrides if not o.startswith("output=")] + [f"output={output}"]
    )
    report = curate(cfg)
    assert _snapshot(output) == before
    assert report == curated.report
    assert first_stage_marker.stat().st_mtime_ns == marker_time


def test_an_output_folder_of_another_run_is_refused(curated, capsys):
    args = [o for o in curated.overrides] + ["language.keep_other=true"]
    assert main_argv(args) == 1
    err = capsys.readouterr().err
    assert "holds the output of another curate run" in err and "language.keep_other" in err


def test_a_folder_that_curate_did_not_write_is_refused(tmp_path, raw_sample):
    (tmp_path / "notes.txt").write_text("mine")
    cfg = compose_curate([f"input={raw_sample.folder}", f"output={tmp_path}", "progress=false"])
    with pytest.raises(ConfigError, match=f"holds no {MANIFEST}"):
        curate(cfg)


def test_bad_input_fails_naming_file_and_line_when_asked(raw_sample, tmp_path):
    cfg = compose_curate(
        [
            f"input={raw_sample.folder}/raw_bad.jsonl",
            f"output={tmp_path}/out",
            "read.on_bad_input=fail",
            "read.fallback_encodings=[]",
            "progress=false",
        ]
    )
    with pytest.raises(BadInputError, match=r"raw_bad.jsonl:2: invalid-json"):
        curate(cfg)


def test_unknown_and_out_of_range_keys_are_refused():
    with pytest.raises(ConfigError, match=r"quality\.ko\.min_word: unknown config key"):
        compose_curate(["input=a", "output=b", "+quality.ko.min_word=3"])
    with pytest.raises(ConfigError, match=r"language.ko_min_hangul=1.5: expected in \[0, 1\]"):
        compose_curate(["input=a", "output=b", "language.ko_min_hangul=1.5"])


def test_the_slurm_preset_composes_and_serves_preprocess_too():
    from chatbaker_megatron.config.executor import load_executor_config

    cfg = compose_curate(["input=a", "output=b", "curate=slurm", "executor.partition=cpu"])
    assert (cfg.executor.kind, cfg.executor.tasks) == ("slurm", 1000)
    preset = os.path.join(os.path.dirname(__file__), "../../../conf/curate/slurm.yaml")
    assert load_executor_config(preset).kind == "slurm"


def test_every_numeric_key_declares_a_range():
    import dataclasses
    import typing

    from chatbaker_megatron.config.checks import RANGE
    from chatbaker_megatron.config.curate import CurateConfig

    def numeric(schema, prefix=""):
        hints = typing.get_type_hints(schema)
        for spec in dataclasses.fields(schema):
            args = [a for a in typing.get_args(hints[spec.name]) if a is not type(None)] or [
                hints[spec.name]
            ]
            kind = args[0]
            inner = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
            if dataclasses.is_dataclass(inner):
                yield from numeric(inner, f"{prefix}{spec.name}.")
            elif inner in (int, float):
                yield f"{prefix}{spec.name}", spec

    missing = [key for key, spec in numeric(CurateConfig) if RANGE not in spec.metadata]
    assert not missing
    json.dumps(dataclasses.asdict(CurateConfig()))  # the fingerprint serialises the config


@pytest.mark.parametrize("keep_partial_files", [False, True])
def test_a_truncated_gzip_keeps_nothing_unless_told_and_is_named(tmp_path, keep_partial_files):
    """Issue 25: a .jsonl.gz cut in the middle exited 0 with its readable half kept, and the
    report said only "unreadable-file 1"."""
    import gzip

    from chatbaker_megatron.data.curate.inputs import UNREADABLE_FILE_STAT, CuratedJsonlReader

    lines = "".join(
        json.dumps({"id": str(i), "text": f"document {i} " * 20}) + "\n" for i in range(400)
    )
    whole = gzip.compress(lines.encode("utf-8"))
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    reader = CuratedJsonlReader(
        str(tmp_path),
        on_bad_input="skip",
        fallback_encodings=[],
        keep_partial_files=keep_partial_files,
    )
    kept = list(reader.read_file("cut.jsonl.gz"))
    stats = {name: stat.total for name, stat in reader.stats.stats.items()}
    assert stats["bad_unreadable-file"] == 1
    assert stats[f"{UNREADABLE_FILE_STAT}cut.jsonl.gz"] == 1
    assert "bad_empty-file" not in stats
    assert (len(kept) > 0) == keep_partial_files
    with pytest.raises(BadInputError, match=r"cut\.jsonl\.gz: unreadable-file: EOFError"):
        failing = CuratedJsonlReader(str(tmp_path), on_bad_input="fail", fallback_encodings=[])
        list(failing.read_file("cut.jsonl.gz"))


@pytest.mark.parametrize("verbose", [False, True])
def test_datatrove_logs_to_its_files_and_to_the_console_only_when_verbose(
    verbose, raw_sample, tmp_path, capfd, monkeypatch
):
    """Issue 23: a curate run printed 724 lines of datatrove's log, ending in a "Total
    Runtime: 0 seconds" (its report step was not timed)."""
    from chatbaker_megatron import notices

    if verbose:
        monkeypatch.setenv(notices.VERBOSE_ENV, "1")
    else:
        monkeypatch.delenv(notices.VERBOSE_ENV, raising=False)
    output = tmp_path / "out"
    cfg = compose_curate(
        [
            f"input={raw_sample.folder}/raw_bad.jsonl",
            f"output={output}",
            "dedup.exact=false",
            "dedup.minhash=false",
            "progress=false",
        ]
    )
    curate(cfg)
    out, err = capfd.readouterr()
    assert re.search(r"^curate: 2 stages in \d+\.\d s \(wall\)$", out, re.MULTILINE), out
    datatrove_lines = [
        line for line in err.splitlines() if "| INFO " in line or "Total Runtime" in line
    ]
    assert bool(datatrove_lines) == verbose, err[-3000:]
    # The task log files hold datatrove's log either way.
    task_log = (output / "logs" / "1_filter" / "logs" / "task_00000.log").read_text("utf-8")
    assert "Processing done for rank=0" in task_log and "Total Runtime" in task_log
    with open(output / "logs" / "2_report" / "stats" / "00000.json", encoding="utf-8") as f:
        assert json.load(f)[0]["time_stats"]["total"] > 0
