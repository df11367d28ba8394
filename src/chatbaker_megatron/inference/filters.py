"""The input filter hook: a check run on every user input before the model sees it.

The online ChatBaker demo screened inputs with a moderation step. Here a
filter is anything with `check(text) -> reason | None`; `--input-filter`
names one, and none runs by default:

    blocklist:PATH         the offline default kind: PATH lists terms, one per
                           line (# comments); an input containing one is
                           refused, compared after NFKC, case folding and
                           with every space and invisible format character
                           (zero-width space, joiners, soft hyphen, BOM)
                           removed, so "폭\u200b탄" and "폭 탄" match "폭탄";
                           the refusal does not repeat the term
    package.module:name    a factory `name()` returning an InputFilter, e.g.
                           a client of a moderation service
"""

from __future__ import annotations

import importlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class InputFilter(Protocol):
    def check(self, text: str) -> str | None:
        """None when the input may go to the model, else the reason it may not."""
        ...


def _normalize(text: str) -> str:
    # NFKC folds full-width and compatibility forms (Ｂａｄ -> Bad) before case folding;
    # spaces and format characters (category Cf: zero-width space and joiners, soft
    # hyphen, BOM, bidi marks) inside a term must not hide it.
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if not ch.isspace() and unicodedata.category(ch) != "Cf")


@dataclass(frozen=True)
class BlocklistFilter:
    terms: tuple[str, ...]

    @classmethod
    def from_file(cls, path: str | Path) -> BlocklistFilter:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no blocklist file (one term per line)")
        lines = path.read_text(encoding="utf-8").splitlines()
        terms = tuple(
            _normalize(t.strip()) for t in lines if t.strip() and not t.lstrip().startswith("#")
        )
        if not terms:
            raise ValueError(f"{path}: the blocklist has no terms")
        return cls(terms)

    def check(self, text: str) -> str | None:
        normalized = _normalize(text)
        if any(term in normalized for term in self.terms):
            # The term is not repeated: the refusal must not teach what to misspell.
            return "the input contains a term on the server's blocklist"
        return None


def load_filter(spec: str | None) -> InputFilter | None:
    """The filter `--input-filter` names (see the module docstring), or None."""
    if not spec:
        return None
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise ValueError(
            f"--input-filter={spec!r}: expected blocklist:PATH or package.module:factory"
        )
    if kind == "blocklist":
        return BlocklistFilter.from_file(arg)
    try:
        factory = getattr(importlib.import_module(kind), arg)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--input-filter={spec!r}: cannot load {arg} from {kind}: {err}") from None
    found = factory()
    if not callable(getattr(found, "check", None)):
        raise ValueError(f"--input-filter={spec!r}: {kind}.{arg}() has no check(text) method")
    return found
