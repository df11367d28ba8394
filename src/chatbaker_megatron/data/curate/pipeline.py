"""The curate job: its stages, their executors (local or SLURM), and the run.

Stages (each a datatrove job with its own logging folder, so each resumes
on its own completion markers; `executor.tasks` = N):

  filter          N  read -> normalise -> language -> boilerplate -> quality -> PII
                     -> work/filtered + exact-dedup signatures
  exact_find      1  duplicate hashes across every task
  exact_filter    N  drop exact duplicates -> work/unique + MinHash signatures
  minhash_buckets B  one task per band: pairs of documents sharing it
  minhash_cluster 1  union-find over the pairs: which documents to remove
  minhash_filter  N  drop near duplicates -> <output>/<language>/<rank>.jsonl
  report          1  report.{json,md,png}

With `dedup.exact=false` or `dedup.minhash=false` their stages go and the
rest join up. A task rewrites its files from the start, so a killed task
leaves nothing that its rerun would duplicate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from datatrove.executor.base import PipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers import JsonlWriter
from tqdm import tqdm

from chatbaker_megatron.config.curate import CurateConfig
from chatbaker_megatron.data.curate import dedup
from chatbaker_megatron.data.curate.inputs import (
    CuratedJsonlReader,
    CuratedParquetReader,
    InputFiles,
)
from chatbaker_megatron.data.curate.language import LanguageRouter
from chatbaker_megatron.data.curate.normalize import TextNormalizer
from chatbaker_megatron.data.curate.pii import PIIScrubber
from chatbaker_megatron.data.curate.quality import (
    BoilerplateLines,
    KoreanParticleFilter,
    gopher_filters,
)
from chatbaker_megatron.data.curate.report import ReportStep
from chatbaker_megatron.data.curate.tally import Tally
from chatbaker_megatron.data.executors import build_executor, stage_logging_dir

# Metadata our steps add for each other, not written to the output records.
INTERNAL_KEYS = ("file_path", "hangul_ratio", "latin_ratio", "duplicate_count")


@dataclass
class Stage:
    name: str
    pipeline: list[PipelineStep]
    tasks: int
    logging_dir: str = ""
    executor: PipelineExecutor | None = field(default=None, repr=False)


def output_record(self: JsonlWriter, doc: Any) -> dict[str, Any]:
    """A written document: its input id, text, language, source and remaining input fields."""
    extra = {k: v for k, v in doc.metadata.items() if k not in INTERNAL_KEYS}
    return {"id": doc.id, "text": doc.text, **extra}


def _readers(cfg: CurateConfig, inputs: InputFiles, work: str) -> list[PipelineStep]:
    """The first stage's readers: one per input format present, each sharding its files by rank."""
    progress = cfg.progress and cfg.executor.kind == "local"
    common: dict[str, Any] = {  # for both readers
        "text_key": cfg.read.text_key,
        "id_key": cfg.read.id_key,
        "on_bad_input": cfg.read.on_bad_input,
        "file_progress": progress,
        "doc_progress": progress,
    }
    readers: list[PipelineStep] = []
    for kind, files in (("jsonl", inputs.jsonl), ("parquet", inputs.parquet)):
        if not files:
            continue
        paths_file = os.path.join(work, f"inputs_{kind}.txt")
        with open(paths_file, "w", encoding="utf-8") as f:
            f.write("".join(f"{p}\n" for p in files))
        if kind == "jsonl":
            readers.append(
                CuratedJsonlReader(
                    inputs.root,
                    paths_file=paths_file,
                    fallback_encodings=cfg.read.fallback_encodings,
                    keep_partial_files=cfg.read.keep_partial_files,
                    add_file_path=False,
                    **common,
                )
            )
        else:
            readers.append(CuratedParquetReader(inputs.root, paths_file=paths_file, **common))
    return readers


def _cleaning(cfg: CurateConfig) -> list[PipelineStep]:
    lang, quality = cfg.language, cfg.quality
    steps: list[PipelineStep] = [
        TextNormalizer(),
        LanguageRouter(lang.ko_min_hangul, lang.en_min_latin, lang.keep_other),
        Tally("routed"),
    ]
    if quality.boilerplate_lines:
        steps.append(BoilerplateLines())
    steps += gopher_filters("ko", quality.ko) + gopher_filters("en", quality.en)
    if quality.ko_min_particle_ratio is not None:
        steps.append(
            KoreanParticleFilter(quality.ko_min_particle_ratio, quality.ko_particle_min_words)
        )
    steps += [
        Tally("quality"),
        PIIScrubber(cfg.pii.kinds, cfg.pii.rrn_require_checksum, cfg.pii.ip_public_only),
        Tally("pii"),
    ]
    return steps


def build_stages(cfg: CurateConfig, inputs: InputFiles) -> list[Stage]:
    """The stages of this job, in order, with their logging folders (not yet executors)."""
    out = os.path.abspath(cfg.output)
    work = os.path.join(out, "work")
    os.makedirs(work, exist_ok=True)
    n = cfg.executor.tasks
    stages: list[Stage] = []
    current = [*_readers(cfg, inputs, work), Tally("read"), *_cleaning(cfg)]
    current_name = "filter"
    if cfg.dedup.exact:
        current += [dedup.work_writer(f"{work}/filtered"), dedup.exact_signature(f"{work}/exact")]
        stages += [
            Stage(current_name, current, n),
            Stage("exact_find", [dedup.exact_find(f"{work}/exact")], 1),
        ]
        current = [
            dedup.work_reader(f"{work}/filtered"),
            dedup.exact_filter(f"{work}/exact"),
            Tally("exact_dedup"),
        ]
        current_name = "exact_filter"
    if cfg.dedup.minhash:
        current += [
            dedup.work_writer(f"{work}/unique"),
            dedup.minhash_signature(f"{work}/minhash", cfg.dedup),
        ]
        stages += [
            Stage(current_name, current, n),
            Stage(
                "minhash_buckets",
                [dedup.minhash_buckets(f"{work}/minhash", cfg.dedup)],
                cfg.dedup.buckets,
            ),
            Stage("minhash_cluster", [dedup.minhash_cluster(f"{work}/minhash", cfg.dedup)], 1),
        ]
        current = [
            dedup.work_reader(f"{work}/unique"),
            dedup.minhash_filter(f"{work}/minhash"),
            Tally("near_dedup"),
        ]
        current_name = "minhash_filter"
    suffix = ".jsonl.gz" if cfg.compress else ".jsonl"
    current.append(
        JsonlWriter(
            out,
            output_filename="${language}/${rank}" + suffix,
            compression="gzip" if cfg.compress else None,
            adapter=output_record,
        )
    )
    stages.append(Stage(current_name, current, n))
    logs_root = os.path.join(out, "logs")
    for i, stage in enumerate(stages, start=1):
        stage.name = f"{i}_{stage.name}"
        stage.logging_dir = stage_logging_dir(cfg.executor, logs_root, stage.name)
    report_dir = stage_logging_dir(cfg.executor, logs_root, f"{len(stages) + 1}_report")
    stage_dirs = [(s.name, s.logging_dir) for s in stages]
    stages.append(Stage(f"{len(stages) + 1}_report", [ReportStep(out, stage_dirs)], 1, report_dir))
    return stages


def run_stages(cfg: CurateConfig, stages: list[Stage]) -> None:
    """Local: each stage in turn under one progress bar. SLURM: submit the chained arrays."""
    previous = None
    for stage in stages:
        stage.executor = build_executor(
            cfg.executor,
            stage.pipeline,
            stage.logging_dir,
            stage=stage.name,
            tasks=stage.tasks,
            depends=previous,
        )
        previous = stage.executor
    if cfg.executor.kind != "local":
        last = stages[-1].executor
        assert last is not None  # built in the loop above
        last.run()
        return
    bar = tqdm(stages, desc="curate", unit="stage", disable=not cfg.progress)
    for stage in bar:
        bar.set_postfix_str(stage.name)
        stage.executor.run()
