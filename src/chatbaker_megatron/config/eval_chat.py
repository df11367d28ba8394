"""`chatbaker eval-chat` config: conf/eval_chat.yaml (docs/eval.md, "Chat models").

Models are a mapping name -> endpoint, so a Hydra override adds or removes
one (`+models.gpt4o.model=gpt-4o`, `~models.demo-plm`); the judge is one
endpoint. Numeric keys declare their ranges and choices their enums
(config/checks.py), and `EvalChatConfig.validate` checks the rest before any
call is made. The defaults here are the shipped ones (conf/eval_chat.yaml holds
only the defaults list): the two demo models that `make demo-eval-chat` serves,
compared with the judge-free chrF metric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from chatbaker_megatron.config.checks import (
    Choice,
    ConfigError,
    bounded,
    check_known_keys,
    check_values,
)


class Mode(Choice):
    """single: the judge grades each answer 1-10; pairwise: it picks the better of two
    (both orders); reference: chrF against the reference answers, no judge."""

    single = "single"
    pairwise = "pairwise"
    reference = "reference"


class BundledLanguage(Choice):
    ko = "ko"
    en = "en"


# Model and judge names become file names (model_answer/<name>.jsonl).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class EndpointConfig:
    """An OpenAI-compatible chat endpoint and how to sample from it."""

    # e.g. http://127.0.0.1:8000/v1 (`chatbaker serve`), https://api.openai.com/v1.
    base_url: str = ""
    # The model name the endpoint expects in requests.
    model: str = ""
    # Name of the environment variable holding the API key (null: no key sent).
    api_key_env: str | None = None
    # null: the category's default (writing/roleplay 0.7, stem/humanities 0.1, else 0).
    temperature: float | None = bounded(None, ge=0, le=2)
    top_p: float | None = bounded(None, gt=0, le=1)
    max_tokens: int = bounded(1024, ge=1)
    seed: int | None = bounded(None, ge=0)
    # Sent as-is in the request body (server-specific fields, e.g. repetition_penalty).
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass
class JudgeConfig(EndpointConfig):
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o"
    # The key is read from this variable, never from the config.
    api_key_env: str | None = "OPENAI_API_KEY"
    # The judge answers deterministically and briefly: a rationale and a verdict.
    temperature: float | None = bounded(0.0, ge=0, le=2)
    max_tokens: int = bounded(1024, ge=1)
    # Asks again when a reply holds no verdict; then the judgment is an error.
    parse_retries: int = bounded(2, ge=0)
    # Name used in model_judgment/<name>_{single,pair}.jsonl (default: `model`).
    name: str | None = None


@dataclass
class QuestionsConfig:
    # The bundled question sets to include (ko, en: 40 questions each in 8 categories; [] for none).
    bundled: list[BundledLanguage] = field(default_factory=lambda: list(BundledLanguage))
    # More question files in FastChat's question.jsonl format.
    files: list[str] = field(default_factory=list)
    # Keep only these categories ([]: all).
    categories: list[str] = field(default_factory=list)
    # Keep the first N questions of each language and category (null: all).
    per_category: int | None = bounded(None, ge=1)


@dataclass
class PairwiseConfig:
    # Compare every model with this one (null: every pair of models).
    baseline: str | None = None


@dataclass
class LanguageCheckConfig:
    # An answer in another language than its question gets the lowest score, unjudged.
    enabled: bool = True
    # The thresholds of `chatbaker curate` (conf/curate.yaml, `language`).
    ko_min_hangul: float = bounded(0.5, ge=0, le=1)
    en_min_latin: float = bounded(0.8, ge=0, le=1)


@dataclass
class ClientConfig:
    # Requests in flight at once (answers and judgments alike).
    concurrency: int = bounded(4, ge=1)
    # Retries of a request answered 429/5xx or not answered; exponential backoff.
    retries: int = bounded(6, ge=0)
    backoff_s: float = bounded(1.0, ge=0)
    backoff_max_s: float = bounded(30.0, ge=0)
    timeout_s: float = bounded(300.0, gt=0)


@dataclass
class StatsConfig:
    bootstrap: int = bounded(1000, ge=100)
    confidence: float = bounded(0.95, gt=0, lt=1)
    seed: int = bounded(0, ge=0)


def _demo_models() -> dict[str, Any]:
    """The two demo models `make demo-eval-chat` serves (the PLM and its SFT)."""
    return {
        name: {"base_url": f"http://127.0.0.1:{port}/v1", "model": name, "max_tokens": 128}
        for name, port in (("demo-plm", 8101), ("demo-sft", 8102))
    }


@dataclass
class EvalChatConfig:
    # Answers, judgments and the report: <output>/model_answer, model_judgment, report.*.
    output: str = "runs/eval_chat"
    mode: Mode = Mode.reference
    # name -> EndpointConfig fields (untyped here so that Hydra overrides can add a model:
    # `+models.NAME={base_url:...,model:...}`, or remove one: `~models.demo-plm`;
    # to_eval_chat_config types and checks them).
    models: dict[str, Any] = field(default_factory=_demo_models)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    questions: QuestionsConfig = field(default_factory=QuestionsConfig)
    pairwise: PairwiseConfig = field(default_factory=PairwiseConfig)
    language_check: LanguageCheckConfig = field(default_factory=LanguageCheckConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    progress: bool = True

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible key."""
        check_values(self)
        if not self.models:
            raise ConfigError("models: at least one model (name -> base_url, model)")
        for name, endpoint in self.models.items():
            if not NAME_PATTERN.match(name):
                raise ConfigError(f"models.{name}: a name of letters, digits, '.', '_' and '-'")
            _check_endpoint(f"models.{name}", endpoint)
        if self.mode != Mode.reference:
            _check_endpoint("judge", self.judge)
            if self.judge.name is not None and not NAME_PATTERN.match(self.judge.name):
                raise ConfigError(f"judge.name={self.judge.name!r}: letters, digits, '.', '_', '-'")
        if self.mode == Mode.pairwise and len(self.models) < 2:
            raise ConfigError("mode=pairwise: needs at least two models")
        baseline = self.pairwise.baseline
        if baseline is not None and baseline not in self.models:
            raise ConfigError(
                f"pairwise.baseline={baseline!r}: not one of the models ({', '.join(self.models)})"
            )
        if not self.questions.bundled and not self.questions.files:
            raise ConfigError("questions: no bundled set and no files")


def register() -> None:
    """Make `eval_chat_schema` available to conf/eval_chat.yaml's defaults list."""
    ConfigStore.instance().store(name="eval_chat_schema", node=EvalChatConfig)


def to_eval_chat_config(node: DictConfig) -> EvalChatConfig:
    """The composed config as an EvalChatConfig, every model an EndpointConfig; keys checked."""
    check_known_keys(node, EvalChatConfig)
    models = {}
    for name, fields_ in node.models.items():
        if not isinstance(fields_, DictConfig):
            raise ConfigError(f"models.{name}: expected a mapping (base_url, model, ...)")
        check_known_keys(fields_, EndpointConfig, f"models.{name}.")
        try:
            typed = OmegaConf.merge(OmegaConf.structured(EndpointConfig), fields_)
        except OmegaConfBaseException as err:
            raise ConfigError(f"models.{name}: {err}") from None
        endpoint = OmegaConf.to_object(typed)
        assert isinstance(endpoint, EndpointConfig)  # merged onto a structured EndpointConfig
        models[name] = endpoint
    cfg = OmegaConf.to_object(node)
    assert isinstance(cfg, EvalChatConfig)  # composed with eval_chat_schema
    cfg.models = models
    return cfg


def _check_endpoint(key: str, endpoint: EndpointConfig) -> None:
    check_values(endpoint, f"{key}.")
    for name in ("base_url", "model"):
        value = getattr(endpoint, name)
        if not value:
            raise ConfigError(f"{key}.{name}: required")
    if not endpoint.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{key}.base_url={endpoint.base_url!r}: expected an http(s):// URL")


def judge_name(cfg: EvalChatConfig) -> str:
    """The judge's name in the judgment files."""
    return cfg.judge.name or re.sub(r"[^A-Za-z0-9._-]", "_", cfg.judge.model)
