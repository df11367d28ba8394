"""`chatbaker curate` config: conf/curate.yaml plus the `curate` group (conf/curate/*.yaml).

One dataclass per concern; thresholds declare their ranges and choices
their enums (config/checks.py), and `CurateConfig.validate` checks the rest
before any stage runs. The defaults here are the shipped ones (conf/curate.yaml
holds only the defaults list); the Korean and English quality defaults and
why: docs/curate.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from chatbaker_megatron.config.checks import Choice, ConfigError, bounded, check_values
from chatbaker_megatron.config.executor import ExecutorConfig, curate_executor


class OnBadInput(Choice):
    skip = "skip"
    fail = "fail"


class PIIKind(Choice):
    email = "email"
    rrn = "rrn"
    card = "card"
    phone = "phone"
    ip = "ip"


@dataclass
class ReadConfig:
    # Field holding the text (any name: `content`, `body`, ...) and the id.
    text_key: str = "text"
    id_key: str = "id"
    # Bad records (invalid JSON, undecodable bytes, missing/empty text) and
    # empty shards: `skip` counts them in the report, `fail` stops at the first.
    on_bad_input: OnBadInput = OnBadInput.skip
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


def _english_thresholds() -> QualityThresholds:
    """Gopher's English rules, but for code-heavy technical text: fewer letter words
    (punctuation runs count as words) and more symbols allowed."""
    return QualityThresholds(
        min_words=5,
        min_mean_word_length=3.0,
        max_mean_word_length=10.0,
        min_alpha_words_ratio=0.3,
        min_stop_words=2,
        stop_words=["the", "be", "to", "of", "and", "that", "have", "with"],
        max_symbol_ratio=0.6,
    )


@dataclass
class QualityConfig:
    # Words are eojeol for Korean; Korean function words are particles, so the
    # stop-word rule is off for it (see ko_min_particle_ratio).
    ko: QualityThresholds = field(default_factory=QualityThresholds)
    en: QualityThresholds = field(default_factory=_english_thresholds)
    # Korean particle rule (Gopher's stop words for Korean): share of Hangul
    # eojeol ending in a particle/ending, checked from `ko_particle_min_words` eojeol up.
    ko_min_particle_ratio: float | None = bounded(0.2, ge=0, le=1)
    ko_particle_min_words: int = bounded(20, ge=1)
    boilerplate_lines: bool = True


@dataclass
class PIIConfig:
    kinds: list[PIIKind] = field(default_factory=lambda: list(PIIKind))
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
    # The `curate` group (conf/curate/local.yaml, the default, or slurm.yaml) changes it.
    executor: ExecutorConfig = field(default_factory=curate_executor)
    # gzip the output shards (`chatbaker preprocess` reads plain .jsonl).
    compress: bool = False
    # tqdm bars of the local stages.
    progress: bool = True

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible key."""
        check_values(self)
        for key in ("input", "output"):
            if not getattr(self, key) or getattr(self, key) == "???":
                raise ConfigError(
                    f"{key}: required (chatbaker curate input=PATH_OR_GLOB output=DIR)"
                )
        if not self.read.text_key:
            raise ConfigError("read.text_key: expected the name of the text field")
        for encoding in self.read.fallback_encodings:
            try:
                "".encode(encoding)
            except LookupError:
                raise ConfigError(
                    f"read.fallback_encodings: unknown encoding {encoding!r}"
                ) from None
        for lang in ("ko", "en"):
            q = getattr(self.quality, lang)
            if len(q.max_top_ngram_char_frac) != 3:
                raise ConfigError(
                    f"quality.{lang}.max_top_ngram_char_frac: expected 3 values (2-, 3-, 4-grams)"
                )
            if len(q.max_dup_ngram_char_frac) != 6:
                raise ConfigError(
                    f"quality.{lang}.max_dup_ngram_char_frac: expected 6 values (5..10-grams)"
                )
        self.executor.validate()


def register() -> None:
    """Make `curate_schema` available to conf/curate.yaml's defaults list."""
    ConfigStore.instance().store(name="curate_schema", node=CurateConfig)
