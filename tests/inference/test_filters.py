"""The input filter hook: the blocklist default and plug-in filters by name."""

from __future__ import annotations

import pytest

from chatbaker_megatron.inference.filters import BlocklistFilter, load_filter


class RefuseQuestions:
    def check(self, text: str) -> str | None:
        return "no questions" if text.endswith("?") else None


def refuse_questions() -> RefuseQuestions:
    return RefuseQuestions()


def test_blocklist_matches_case_and_width_variants(tmp_path):
    path = tmp_path / "blocklist.txt"
    path.write_text("# one term per line\n\nSpam\n욕설\n", encoding="utf-8")
    blocklist = load_filter(f"blocklist:{path}")
    assert isinstance(blocklist, BlocklistFilter)
    assert blocklist.check("buy ＳＰＡＭ now") == "the input contains the blocked term 'spam'"
    assert blocklist.check("이건 욕설입니다") is not None
    assert blocklist.check("안녕하세요, spa day?") is None


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
