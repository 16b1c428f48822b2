"""Task files: frontmatter parsing and in-place edits that keep every untouched byte."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.core.errors import TaskFileError
from hypervisor.tasks import taskfile

ORIGINAL = (
    "---\n"
    "title: Fix the thing   # trailing comment\n"
    "status: active\n"
    "custom: {nested: [1, 2], 'odd key': yes}\n"
    "aliases:\n"
    "  - thing\n"
    "created: 2026-10-01\n"
    "# a comment line\n"
    "tags:\n"
    "- a\n"
    "- b\n"
    "---\n"
    "# Body\n\n"
    "Keep   this   exactly.\n"
    "---\n"
    "not frontmatter\n"
)


def test_setting_one_field_changes_only_its_line():
    doc = taskfile.parse_text(ORIGINAL, "t.md")
    doc.set("status", "in_progress")
    assert doc.render() == ORIGINAL.replace("status: active", "status: in_progress")


def test_replacing_a_block_list_and_adding_and_removing_fields():
    doc = taskfile.parse_text(ORIGINAL, "t.md")
    doc.set("tags", ["x"])
    doc.set("assignee", "w1")
    doc.remove("aliases")
    text = doc.render()
    assert "tags:\n- x\nassignee: w1\n---\n" in text
    assert "aliases" not in text and "  - thing" not in text
    assert "# a comment line\n" in text and "custom: {nested: [1, 2], 'odd key': yes}\n" in text
    assert text.endswith("# Body\n\nKeep   this   exactly.\n---\nnot frontmatter\n")
    assert taskfile.parse_text(text, "t.md").data["tags"] == ["x"]


def test_dates_stay_the_strings_the_user_wrote():
    doc = taskfile.parse_text(ORIGINAL, "t.md")
    assert doc.data["created"] == "2026-10-01"
    doc.set("modified", "2026-11-22T10:00:00Z")
    assert "modified: 2026-11-22T10:00:00Z\n" in doc.render()


def test_crlf_and_bom_are_kept():
    text = "\ufeff" + ORIGINAL.replace("\n", "\r\n")
    doc = taskfile.parse_text(text, "t.md")
    doc.set("status", "done")
    out = doc.render()
    assert out.startswith("\ufeff---\r\n")
    assert "status: done\r\n" in out
    assert "\n" not in out.replace("\r\n", "")


def test_worker_log_section_is_created_then_extended_in_place():
    doc = taskfile.parse_text("---\nid: a\n---\nBody\n\n## Worker log\n\n- first\n\n## Notes\nkeep\n", "a.md")
    doc.append_to_section("## Worker log", "- second")
    assert doc.body == "Body\n\n## Worker log\n\n- first\n- second\n\n## Notes\nkeep\n"
    fresh = taskfile.parse_text("---\nid: b\n---\nBody", "b.md")
    fresh.append_to_section("## Worker log", "- one")
    assert fresh.body == "Body\n\n## Worker log\n\n- one\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("no frontmatter\n", "must start with a '---' line"),
        ("---\ntitle: x\n", "not closed"),
        ("---\ntags: [a, b\n---\n", "not valid YAML at line"),
        ("---\n- a\n- b\n---\n", "YAML list, not a mapping"),
        ("---\n1: x\n---\n", "key 1 is not a string"),
    ],
)
def test_bad_frontmatter_is_named(text, needle):
    with pytest.raises(TaskFileError) as info:
        taskfile.parse_text(text, "bad.md")
    assert "bad.md" in str(info.value) and needle in str(info.value)


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(["status", "title", "custom", "tags", "new_key"]), value=values)
def test_any_value_round_trips_and_leaves_other_fields_alone(key, value):
    doc = taskfile.parse_text(ORIGINAL, "t.md")
    before = dict(doc.data)
    doc.set(key, value)
    again = taskfile.parse_text(doc.render(), "t.md")
    assert again.data[key] == value
    assert {k: v for k, v in again.data.items() if k != key} == {k: v for k, v in before.items() if k != key}
    assert again.body == doc.body


def test_unlink_reads_wikilinks_as_the_regex_did():
    """task.unlink parses `[[name|alias]]` without a regex (`re` costs a claim 6 ms): the same answer as the
    pattern it replaces for every string of up to 7 characters over the characters that matter."""
    import itertools
    import re

    from hypervisor.tasks.task import unlink

    pattern = re.compile(r"^\[\[([^\]|#]+)(?:[#|][^\]]*)?\]\]\Z")

    def by_regex(value: str) -> str:
        match = pattern.match(value.strip())
        return match.group(1).strip() if match else value.strip()

    for length in range(8):
        for chars in itertools.product("[]|#a \n", repeat=length):
            value = "".join(chars)
            assert unlink(value) == by_regex(value), repr(value)
