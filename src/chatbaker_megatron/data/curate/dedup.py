"""Exact and MinHash near-dedup with datatrove's stages, across all files and tasks.

Both work on document indexes within a task's stream, so the pass that
filters must read exactly the stream its signatures were computed on:
every signing pass writes its documents to `work/<name>/<rank>.jsonl.gz`
and the next pass reads that one file back (`RankFileReader`), whatever the
other tasks wrote. Exact dedup (xxhash of the normalised text) runs first,
as it is cheap and shrinks the MinHash input; MinHash then removes
documents whose word 5-gram Jaccard similarity is high (14 bands of 8
hashes: 0.92 probability at Jaccard 0.8, 0.99 at 0.9).
"""

from __future__ import annotations

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.dedup import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig

from chatbaker_megatron.config.curate import DedupConfig
from chatbaker_megatron.data.curate.words import EojeolTokenizer

WORK_FILE = "${rank}.jsonl.gz"


def document_bytes(doc: Document) -> bytes:
    return doc.text.encode("utf-8")


def exact_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=document_bytes)


def minhash_config(cfg: DedupConfig) -> MinhashConfig:
    return MinhashConfig(
        n_grams=cfg.ngrams,
        num_buckets=cfg.buckets,
        hashes_per_bucket=cfg.hashes_per_bucket,
        seed=cfg.seed,
        # datatrove hashes each shingle as a str; its xxhash path passes the str
        # straight to xxhash, which (4.x) takes only bytes. sha1 encodes first.
        hash_config=HashConfig(precision=64, hash_fc="sha1"),
    )


class RankFileReader(JsonlReader):
    """Reads `<folder>/<rank>.jsonl.gz`, the stream this task's signatures index."""

    name = "🐿 Jsonl (this task's file)"

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        path = f"{rank:05d}.jsonl.gz"
        if self.data_folder.isfile(path):
            yield from self.read_files_shard([path])


def work_writer(folder: str) -> JsonlWriter:
    return JsonlWriter(folder, output_filename=WORK_FILE, compression="gzip")


def work_reader(folder: str) -> RankFileReader:
    return RankFileReader(folder, add_file_path=False)


def exact_signature(folder: str) -> ExactDedupSignature:
    return ExactDedupSignature(f"{folder}/sigs", config=exact_config())


def exact_find(folder: str) -> ExactFindDedups:
    return ExactFindDedups(f"{folder}/sigs", f"{folder}/dups", config=exact_config())


def exact_filter(folder: str) -> ExactDedupFilter:
    return ExactDedupFilter(f"{folder}/dups", config=exact_config())


def minhash_signature(folder: str, cfg: DedupConfig) -> MinhashDedupSignature:
    return MinhashDedupSignature(
        f"{folder}/sigs", config=minhash_config(cfg), language=EojeolTokenizer()
    )


def minhash_buckets(folder: str, cfg: DedupConfig) -> MinhashDedupBuckets:
    return MinhashDedupBuckets(f"{folder}/sigs", f"{folder}/buckets", config=minhash_config(cfg))


def minhash_cluster(folder: str, cfg: DedupConfig) -> MinhashDedupCluster:
    return MinhashDedupCluster(f"{folder}/buckets", f"{folder}/remove", config=minhash_config(cfg))


def minhash_filter(folder: str) -> MinhashDedupFilter:
    return MinhashDedupFilter(f"{folder}/remove")
