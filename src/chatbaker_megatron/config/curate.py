"""`chatbaker curate` config: conf/curate.yaml plus the `curate` group (conf/curate/*.yaml).

One dataclass per concern; thresholds declare their ranges (config/checks.py)
and `validate_curate_config` checks the rest before any stage runs. The
Korean and English quality defaults and why: docs/curate.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from chatbaker_megatron.config.checks import ConfigError, bounded, check_ranges
from chatbaker_megatron.config.executor import ExecutorConfig, validate_executor_config

ON_BAD_INPUT = ("skip", "fail")
PII_KINDS = ("email", "rrn", "card", "phone", "ip")


@dataclass
class ReadConfig:
    # Field holding the text (any name: `content`, `body`, ...) and the id.
    text_key: str = "text"
    id_key: str = "id"
    # Bad records (invalid JSON, undecodable bytes, missing/empty text) and
    # empty shards: `skip` counts them in the report, `fail` stops at the first.
    on_bad_input: str = "skip"
    # Tried in order when a line is not UTF-8 (Korean legacy pages: cp949 = EUC-KR + UHC).
    fallback_encodings: list[str] = field(default_factory=lambda: ["cp949"])
    # A compressed file that ends in the middle (truncated) or fails its checksum: false
    # keeps none of it (the report names it); true keeps the documents before the damage.
    keep_partial_files: bool = False


@dataclass
class LanguageConfig:
    # Share of a document's letters that must be Hangul for `ko` (checked first) ...
    ko_min_hangul: float = bounded(0.5, ge=0, le=1)
    # ... or Latin for `en`; anything else is `other`.
    en_min_latin: float = bounded(0.8, ge=0, le=1)
    # Write `other` documents to other/ (unfiltered by quality) instead of dropping them.
    keep_other: bool = False


@dataclass
class QualityThresholds:
    """One language's Gopher-style thresholds; null switches a rule off."""

    min_words: int = bounded(3, ge=1)
    max_words: int | None = bounded(100_000, ge=1)
    min_mean_word_length: float | None = bounded(1.8, ge=0)
    max_mean_word_length: float | None = bounded(6.0, gt=0)
    # `#` and `...` occurrences per word.
    max_symbol_word_ratio: float | None = bounded(0.1, gt=0)
    max_bullet_lines_ratio: float | None = bounded(0.9, gt=0, le=1)
    max_ellipsis_lines_ratio: float | None = bounded(0.3, gt=0, le=1)
    # Share of words (punctuation runs count as words) with a letter.
    min_alpha_words_ratio: float | None = bounded(0.5, gt=0, le=1)
    min_stop_words: int = bounded(0, ge=0)
    stop_words: list[str] = field(default_factory=list)
    max_digit_ratio: float | None = bounded(0.3, gt=0, le=1)
    max_symbol_ratio: float | None = bounded(0.35, gt=0, le=1)
    max_dup_line_frac: float | None = bounded(0.3, gt=0, le=1)
    max_dup_para_frac: float | None = bounded(0.3, gt=0, le=1)
    max_dup_line_char_frac: float | None = bounded(0.2, gt=0, le=1)
    max_dup_para_char_frac: float | None = bounded(0.2, gt=0, le=1)
    # Top 2-, 3-, 4-gram and duplicated 5..10-gram character fractions (Gopher table A1),
    # checked from this many words up (a short text's one 2-gram is a large fraction).
    ngram_rules_min_words: int = bounded(50, ge=1)
    max_top_ngram_char_frac: list[float] = bounded(
        default_factory=lambda: [0.2, 0.18, 0.16], gt=0, le=1
    )
    max_dup_ngram_char_frac: list[float] = bounded(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10], gt=0, le=1
    )


@dataclass
class QualityConfig:
    ko: QualityThresholds = field(default_factory=QualityThresholds)
    en: QualityThresholds = field(default_factory=QualityThresholds)
    # Korean particle rule (Gopher's stop words for Korean): share of Hangul
    # eojeol ending in a particle/ending, checked from `ko_particle_min_words` eojeol up.
    ko_min_particle_ratio: float | None = bounded(0.2, ge=0, le=1)
    ko_particle_min_words: int = bounded(20, ge=1)
    boilerplate_lines: bool = True


@dataclass
class PIIConfig:
    kinds: list[str] = field(default_factory=lambda: list(PII_KINDS))
    # Numbers issued since October 2020 carry no check digit; false scrubs every
    # date-valid 13-digit number (more recall, more false positives).
    rrn_require_checksum: bool = True
    # Private, loopback and documentation addresses identify nobody.
    ip_public_only: bool = True


@dataclass
class DedupConfig:
    exact: bool = True
    minhash: bool = True
    # Word 5-grams, 14 buckets x 8 hashes: P(caught) = 1-(1-J^8)^14, 0.92 at Jaccard 0.8.
    ngrams: int = bounded(5, ge=1)
    buckets: int = bounded(14, ge=1)
    hashes_per_bucket: int = bounded(8, ge=1)
    seed: int = bounded(1, ge=0)


@dataclass
class CurateConfig:
    # Input files: a .jsonl / .jsonl.gz / .parquet file, a folder of them, or a glob.
    input: str = "???"
    # Output folder: <language>/<rank>.jsonl, report.{md,json,png}, work/, logs/.
    output: str = "???"
    read: ReadConfig = field(default_factory=ReadConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    # gzip the output shards (`chatbaker preprocess` reads plain .jsonl).
    compress: bool = False
    # tqdm bars of the local stages.
    progress: bool = True


def register() -> None:
    """Make `curate_schema` available to conf/curate.yaml's defaults list."""
    ConfigStore.instance().store(name="curate_schema", node=CurateConfig)


def validate_curate_config(cfg: Any) -> None:
    """Raise ConfigError naming the first impossible key of a CurateConfig."""
    check_ranges(cfg)
    for key in ("input", "output"):
        if not getattr(cfg, key) or getattr(cfg, key) == "???":
            raise ConfigError(f"{key}: required (chatbaker curate input=PATH_OR_GLOB output=DIR)")
    if cfg.read.on_bad_input not in ON_BAD_INPUT:
        raise ConfigError(
            f"read.on_bad_input={cfg.read.on_bad_input!r}: expected one of {', '.join(ON_BAD_INPUT)}"
        )
    if not cfg.read.text_key:
        raise ConfigError("read.text_key: expected the name of the text field")
    for encoding in cfg.read.fallback_encodings:
        try:
            "".encode(encoding)
        except LookupError:
            raise ConfigError(f"read.fallback_encodings: unknown encoding {encoding!r}") from None
    for kind in cfg.pii.kinds:
        if kind not in PII_KINDS:
            raise ConfigError(f"pii.kinds: {kind!r} is not one of {', '.join(PII_KINDS)}")
    for lang in ("ko", "en"):
        q = getattr(cfg.quality, lang)
        if len(q.max_top_ngram_char_frac) != 3:
            raise ConfigError(
                f"quality.{lang}.max_top_ngram_char_frac: expected 3 values (2-, 3-, 4-grams)"
            )
        if len(q.max_dup_ngram_char_frac) != 6:
            raise ConfigError(
                f"quality.{lang}.max_dup_ngram_char_frac: expected 6 values (5..10-grams)"
            )
    validate_executor_config(cfg.executor)
