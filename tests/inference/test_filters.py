"""The input filter hook: the blocklist default and plug-in filters by name."""

from __future__ import annotations

import pytest

from chatbaker_megatron.inference.filters import BlocklistFilter, load_filter


class RefuseQuestions:
    def check(self, text: str) -> str | None:
        return "no questions" if text.endswith("?") else None


def refuse_questions() -> RefuseQuestions:
    return RefuseQuestions()


def test_blocklist_matches_case_width_spacing_and_invisible_variants(tmp_path):
    path = tmp_path / "blocklist.txt"
    path.write_text("# one term per line\n\nSpam\n욕설\n폭 탄\n", encoding="utf-8")
    blocklist = load_filter(f"blocklist:{path}")
    assert isinstance(blocklist, BlocklistFilter)
    reason = blocklist.check("buy ＳＰＡＭ now")
    assert reason == "the input contains a term on the server's blocklist"
    for variant in (
        "이건 욕설입니다",
        "폭탄",
        "폭\u200b탄",
        "폭 탄",
        "폭\u00a0\u200d탄",
        "s p\u00adam",
    ):
        assert blocklist.check(variant) is not None, variant
    assert blocklist.check("안녕하세요, spa day?") is None
    # The refusal never repeats the term.
    assert not any(term in reason for term in ("spam", "욕설", "폭탄"))


def test_plugin_filters_load_by_name():
    plugin = load_filter(f"{__name__}:refuse_questions")
    assert plugin.check("why?") == "no questions" and plugin.check("hello") is None
    assert load_filter(None) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("blocklist", "expected blocklist:PATH or package.module:factory"),
        ("blocklist:/no/such/file", "no blocklist file"),
        ("no_such_module:factory", "cannot load factory from no_such_module"),
        (f"{__name__}:RefuseQuestions.check", "cannot load"),
    ],
)
def test_bad_filter_specs_are_named(spec, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_filter(spec)
