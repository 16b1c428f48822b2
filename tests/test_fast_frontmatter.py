"""fastyaml against PyYAML: the fast frontmatter path reads and writes exactly what PyYAML would, or declines."""

from __future__ import annotations

import ast
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hypervisor.tasks import fastyaml, taskfile

REPO = Path(__file__).resolve().parent.parent
CASES = int(os.environ.get("FAST_FRONTMATTER_CASES", "30000"))

COMMON = [
    "title: Fix the login bug\nstatus: active\npriority: 1\nproject: website\ncreated: 2026-01-05\n",
    "id: task-001\nstatus: in_progress\nassignee: worker-1\nattempts: 2\nmodified: 2026-11-22T10:00:00Z\n",
    'depends_on: ["[[task-a]]", "[[task-b|B]]"]\ntags: [bug, ui]\nscope: ["src/**", \'docs/*.md\']\n',
    "tags:\n- a\n- b\ndepends_on:\n  - '[[x]]'\n  - y\n",
    "title: 'It''s quoted: with a colon'\nnote: \"say \\\"hi\\\"\"\nempty:\nnothing: null\ntilde: ~\n",
    "title: Fix the thing   # trailing comment\n# a comment line\n\nstatus: done\ncommit: 'e3b0c44'\n",
    "title: Ünïcödé – 日本語 ✓\nestimate: 3h\nversion: 1.2.3\nratio: 0.5\ndone: true\nflag: False\n",
    "title: x\r\nstatus: inbox\r\ntags: [a]\r\n",
    "",
]


class PureTaskLoader(yaml.SafeLoader):
    """TaskLoader without libyaml: what taskfile falls back to where PyYAML was built without it."""


PureTaskLoader.yaml_implicit_resolvers = taskfile.TaskLoader.yaml_implicit_resolvers


def yaml_or_error(text: str, loader=None):
    try:
        return taskfile.load_yaml(text) if loader is None else yaml.load(text, Loader=loader)  # noqa: S506
    except yaml.YAMLError:
        return "<YAMLError>"
    except ValueError:  # PyYAML's constructors raise it for some numbers (e.g. ints too long for int())
        return "<ValueError>"


def same(a, b) -> bool:
    """Equal, with the same types all the way down (1 == 1.0 == True would hide a wrong resolution)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)


def check(text: str) -> bool:
    """Assert fast == yaml unless fast declines; whether fast accepted `text`."""
    fast = fastyaml.load(text)
    if fast is None:
        return False
    for loader in (None, PureTaskLoader):
        expected = yaml_or_error(text, loader)
        assert same(fast, expected if expected is not None else {}), (text, fast, expected, loader)
    return True


def frontmatter_of(text: str) -> str | None:
    """The frontmatter lines of a task file's text, split as taskfile.parse_text splits them."""
    text = text.removeprefix("\ufeff")
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip("\r\n").rstrip(" \t") != "---":
        return None
    for index in range(1, len(lines)):
        if lines[index].rstrip("\r\n").rstrip(" \t") in ("---", "..."):
            return "".join(lines[1:index])
    return None


def fixture_texts() -> list[str]:
    """Every example task file, and every task-file string constant in the tests."""
    texts = [path.read_text(encoding="utf-8") for path in sorted((REPO / "examples").rglob("*.md"))]
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value.removeprefix("\ufeff").startswith("---"):
                    texts.append(node.value)
    return texts


def test_resolver_patterns_are_pyyamls():
    wanted = {"bool": fastyaml._BOOL, "float": fastyaml._FLOAT, "int": fastyaml._INT, "null": fastyaml._NULL}
    found = {}
    for entries in taskfile.TaskLoader.yaml_implicit_resolvers.values():
        for tag, regexp in entries:
            found[tag.rsplit(":", 1)[1]] = regexp
    assert "timestamp" not in found
    for name, regexp in wanted.items():
        assert (regexp.pattern, regexp.flags) == (found[name].pattern, found[name].flags), name


@pytest.mark.parametrize("text", COMMON)
def test_common_shapes_are_read_fast_and_right(text):
    assert check(text), text


def test_examples_and_test_fixtures(capsys):
    texts = [fm for fm in map(frontmatter_of, fixture_texts()) if fm is not None]
    accepted = sum(check(fm) for fm in texts)
    valid = sum(isinstance(yaml_or_error(fm), dict | type(None)) for fm in texts)
    with capsys.disabled():
        print(f"\nfastyaml accepts {accepted} of {len(texts)} example/fixture frontmatters ({valid} valid YAML maps)")
    assert len(texts) > 60 and accepted >= 0.8 * valid


# -- random frontmatter from a grammar of tricky tokens ---------------------------------------------------------------
NUMBERS = """0 -0 +0 7 +12 -12 012 0o12 0x1F -0x1f 0b101 0b 0x 1_000 1__0 _1 1_ 1:30 -1:30 190:20:30 1:60 1:5
    1.5 -1.5 +1.5 1. .5 -.5 +.5 1e5 1E5 1.0e+5 1.0E-3 1e+5 6.8523015e+5 685.230_15e+03 190:20:30.15 .inf -.Inf
    +.INF .NaN .nan .NAN inf nan 00 09 08.5 0.0 -0.0 3.14159 1.2.3 2.10 1,000 0.1_ 99999999999999999999999
    123456789012345678901234567890.5""".split()
BOOLS = "yes Yes YES no No NO y n Y N true True TRUE tRue false False FALSE on On ON off Off OFF".split()
NULLS = ["~", "null", "Null", "NULL", "nULL", "none", "None", ""]
DATES = ["2026-01-05", "2026-1-5", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5",
         "2026-11-22T10:00:00Z", "20260105", "2026-01-05T10:00"]  # fmt: skip
WORDS = ["a", "task", "Fix", "the", "x1", "_", "é", "日本", "✓", "\U0001f600", "it's", 'say "hi"', "C#", "a:b",
         "http://x.y/z", "[[link]]", "[[a|b]]", "(p)", "$x", "^", "\\", "=", "==", "<<", "<", ">", "a,b"]  # fmt: skip
SPECIAL = [": ", ":", " #", "#", " # c", "[", "]", "{", "}", ",", "&a", "*a", "!tag", "!!str", "|", ">", "%", "@",
           "`", "'", '"', "''", "-", "- ", "?", "? ", "...", "---", "\xa0", "\u3000", "\u2028", "\x85", "\ufeff",
           "\t", " ", "  ", "\\n", "\x7f", "\x01", "\r", "\\x41"]  # fmt: skip
KEYS = ["title", "status", "tags", "k", "_x", "a-b", "a.b", "yes", "no", "on", "null", "Null", "~", "true", "1",
        "1.5", "<<", "=", "a b", '"q"', "'q'", "?x", "-k", "é", "title", "k" * 130]  # fmt: skip


def token(rng: random.Random) -> str:
    pool = rng.choice((NUMBERS, BOOLS, NULLS, DATES, WORDS, WORDS, SPECIAL))
    return rng.choice(pool)


def plain(rng: random.Random) -> str:
    parts = [token(rng) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
    return rng.choice(("", " ", "-", ":", "_")).join(parts)


def single_quoted(rng: random.Random) -> str:
    inner = plain(rng).replace("'", rng.choice(("''", "'", "")))
    return f"'{inner}'"


def double_quoted(rng: random.Random) -> str:
    inner = plain(rng).replace('"', rng.choice(('\\"', '"', "")))
    inner += rng.choice(("", "\\n", "\\t", "\\\\", '\\"', "\\r", "\\x41", "\\u00e9", "\\q", "\\/", "\\0", "\\"))
    return f'"{inner}"'


def scalar(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.55:
        return plain(rng)
    if roll < 0.75:
        return single_quoted(rng)
    return double_quoted(rng)


def flow(rng: random.Random) -> str:
    items = [scalar(rng) for _ in range(rng.randrange(4))]
    separator = rng.choice((", ", ",", " , ", ",  ", ", ", ", "))
    text = "[" + rng.choice(("", " ")) + separator.join(items) + rng.choice(("", "", " ", ",")) + "]"
    if rng.random() < 0.05:
        text = text[:-1]
    return text


def value(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.6:
        return scalar(rng)
    if roll < 0.8:
        return flow(rng)
    return rng.choice(("", "", " ", "# c", "|", ">", "{a: 1}", "&x a", "*x", "!!str 1"))


def line(rng: random.Random) -> list[str]:
    roll = rng.random()
    key = rng.choice(KEYS) if rng.random() < 0.3 else rng.choice(("title", "status", "tags", "k", "depends_on"))
    colon = rng.choice((": ", ": ", ": ", ":  ", ":", " : ", ":\t"))
    if roll < 0.6:
        return [key + colon + value(rng) + rng.choice(("", "", "", " ", "  # note", " #", "\t", "#x"))]
    if roll < 0.8:
        indent = rng.choice(("", "", "  ", "    ", " "))
        items = []
        for _ in range(rng.randrange(1, 4)):
            item_indent = indent if rng.random() < 0.9 else rng.choice(("", " ", "      "))
            items.append(item_indent + rng.choice(("- ", "- ", "-  ", "-", "-\t", "- - ")) + scalar(rng))
            if rng.random() < 0.05:
                items.append(rng.choice(("", "  ", "# c", "  # c", "  more", "more")))
        return [key + ":" + rng.choice(("", "", " ", " # c"))] + items
    return [rng.choice(("", "", "# comment", "  # indented", "   ", "  continued", "\t", "---", "...", "%YAML 1.1",
                        "- a", "? k", ": v", "k: v", "k: 'multi", "  line'", "[a, b]"))]  # fmt: skip


def frontmatter(rng: random.Random) -> str:
    lines: list[str] = []
    for _ in range(rng.randrange(0, 7)):
        lines.extend(line(rng))
    newline = rng.choice(("\n",) * 8 + ("\r\n", "\r"))
    return "".join(entry + newline for entry in lines)


def test_random_frontmatter_is_read_exactly_or_declined():
    rng = random.Random(20260105)
    accepted = 0
    for _ in range(CASES):
        accepted += check(frontmatter(rng))
    assert accepted > CASES // 20, f"fastyaml accepted only {accepted} of {CASES}"


def test_random_single_lines_are_read_exactly_or_declined():
    rng = random.Random(7)
    accepted = sum(check(f"k: {value(rng)}\n") for _ in range(CASES))
    assert accepted > CASES // 4, f"fastyaml accepted only {accepted} of {CASES}"


# -- writing ----------------------------------------------------------------------------------------------------------
def random_value(rng: random.Random):
    roll = rng.random()
    if roll < 0.1:
        return rng.choice((None, True, False, 0, -3, 42, 10**30, -(10**120), 1.5))
    if roll < 0.25:
        return [random_value(rng) for _ in range(rng.randrange(3))]
    return rng.choice(("", " ", "-")).join(token(rng) for _ in range(rng.choice((1, 1, 2, 3))))


@pytest.mark.parametrize(
    "value",
    [None, True, 0, 3, "active", "in_progress", "worker-1", "2026-11-22T10:00:00Z", "Some reason: it failed",
     "1234567", "e3b0c44", "", ["a", "b"], [], "Ünïcödé ✓"],
)  # fmt: skip
def test_common_values_are_written_fast_and_right(value):
    fast = fastyaml.dump_field("status", value)
    assert fast is not None and fast == taskfile._dump({"status": value})


def test_random_values_are_written_exactly_or_declined():
    rng = random.Random(11)
    accepted = 0
    for _ in range(CASES):
        key, value = rng.choice(KEYS + ["status"] * 20), random_value(rng)
        fast = fastyaml.dump_field(key, value)
        if fast is not None:
            accepted += 1
            assert fast == taskfile._dump({key: value}), (key, value)
            again = fastyaml.load(fast)
            assert again is None or same(again, {key: value}), (key, value, again)
    assert accepted > CASES // 2


def test_a_common_file_is_read_and_edited_without_importing_yaml(tmp_path):
    path = tmp_path / "t.md"
    path.write_text("---\n" + COMMON[0] + COMMON[2] + "---\nBody\n", encoding="utf-8")
    script = (
        "import sys\nfrom hypervisor.tasks import taskfile\n"
        f"doc = taskfile.read_doc({str(path)!r})\n"
        "doc.set('status', 'done'); doc.set('attempts', 3); doc.set('modified', '2026-11-23T09:00:00Z')\n"
        "assert taskfile.parse_text(doc.render(), 't.md').data['status'] == 'done'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'yaml'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_unsafe_character_check_is_the_regex_it_replaces():
    """fastyaml checks characters without the regexes it used (10 ms each to compile): the same answer for every
    ASCII character, every code point at and beside the edge of a range, and a random sample of the rest, alone
    and beside ASCII and non-ASCII text."""
    import re

    load_pattern = re.compile("[^\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]")
    dump_pattern = re.compile("[^\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd]")
    edges = {edge + step for first, last in fastyaml._SAFE_RANGES for edge in (first, last) for step in (-1, 0, 1)}
    codes = set(range(0x100)) | edges | set(random.Random(15).sample(range(0x110000), 20000))
    for code in sorted(codes - {0x110000}):
        char = chr(code)
        for text in (char, f"a{char}b", f"\u00e9{char}\n"):
            assert fastyaml._unsafe(text, fastyaml._SAFE_RANGES, newline=True) == bool(load_pattern.search(text))
            assert fastyaml._unsafe(text, fastyaml._SAFE_TO_DUMP_RANGES, newline=False) == bool(
                dump_pattern.search(text)
            ), hex(code)
