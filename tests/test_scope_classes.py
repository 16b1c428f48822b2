"""The scope matcher's `[...]` classes (and `?`, `*` within one name) read exactly as fnmatch.fnmatchcase reads them:
`[!x]` negates and `[^x]` does not, a `]` first in a class is a member, an unclosed `[` is a literal, a backwards
range is empty. `**` spanning folders and the rest of the scope rule are tests/test_hooks.py's."""

from __future__ import annotations

import fnmatch
import warnings

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hypervisor.core.rules import _match_name, scope_allows

# The characters that steer fnmatch's class parser, a few members for the ranges, and characters that mean something
# to the regular expression fnmatch builds (which must mean nothing here).
PATTERN_CHARS = "[]!^-?abcz\\&~|."
NAME_CHARS = "[]!^-abcz\\&~|.Z"


def fnmatch_verdict(name: str, pattern: str) -> bool:
    with warnings.catch_warnings():  # "Possible nested set" and the like, from the regular expression fnmatch builds
        warnings.simplefilter("ignore")
        return fnmatch.fnmatchcase(name, pattern)


@pytest.mark.parametrize(
    ("pattern", "name"),
    [("[^x]", "a"), ("[^x]", "^"), ("[!x]", "a"), ("[!x]", "x"), ("[]a]", "]"), ("[!]a]", "b"), ("[!]a]", "]"),
     ("[!]", "[!]"), ("[!]", "a"), ("[b-a]", "a"), ("[!b-a]", "q"), ("[b-a!x]", "y"), ("[b-a!x]", "x"),
     ("[a-]", "-"), ("[-a]", "-"), ("[a-c-e]", "d"), ("[a-c-e]", "-"), ("[[]", "["), ("a[", "a["), ("[\\]", "\\"),
     ("[a&&b]", "&"), ("[z-a]x", "x"), ("[!a-c--e]", "d"), ("[a-c--e]", "d")],
)  # fmt: skip
def test_known_class_quirks_read_as_fnmatch_reads_them(pattern, name):
    assert _match_name(pattern, name) == fnmatch_verdict(name, pattern), (pattern, name)


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=PATTERN_CHARS, min_size=1, max_size=9), st.text(alphabet=NAME_CHARS, max_size=4))
@example("[^x]", "a")
@example("[!]a]", "b")
def test_classes_match_as_fnmatch_does(pattern, name):
    """Patterns without `*`: the fnmatch-compatible subset of a scope glob's name, here one folder or file name."""
    assert scope_allows(name, [pattern]) == fnmatch_verdict(name, pattern) if name else True, (pattern, name)
    assert _match_name(pattern, name) == fnmatch_verdict(name, pattern), (pattern, name)


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=PATTERN_CHARS + "*", min_size=1, max_size=9), st.text(alphabet=NAME_CHARS, max_size=6))
def test_one_name_with_stars_matches_as_fnmatch_does(pattern, name):
    """Within one name `*` is fnmatch's too (`**` as a whole path segment is the scope rule's own)."""
    assert _match_name(pattern, name) == fnmatch_verdict(name, pattern), (pattern, name)


def test_classes_inside_a_path_glob():
    assert scope_allows("src/a1.py", ["src/[!0-9]*.py"])
    assert not scope_allows("src/1a.py", ["src/[!0-9]*.py"])
    assert scope_allows("src/a.py", ["src/[^a].py"]) and scope_allows("src/^.py", ["src/[^a].py"])  # no negation
    assert not scope_allows("src/b.py", ["src/[^a].py"])
    assert scope_allows("docs/x/y/[a].md", ["docs/**/[[]a].md"])
