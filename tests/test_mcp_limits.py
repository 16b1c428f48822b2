"""The MCP tools' limits: every string argument has one, its description states it, and a call outside it (or with
a wrong type, a number out of range, a path trick, a change that would make the task file unreadable) is a short
tool error in our words that quotes at most 200 characters of the value; nothing is written, and the server goes
on serving. Its view of the task files is never staler than a stat."""

from __future__ import annotations

import asyncio
import itertools
import os
import re

import pytest
from conftest import make_queue, run_cli, write_task
from mcp import Client
from test_mcp_server import server_params, structured

from hypervisor.core import limits, rules
from hypervisor.core.errors import HypervisorError, InvalidTaskId, TaskFileError, UsageError
from hypervisor.frontends import mcp_server
from hypervisor.tasks import taskfile
from hypervisor.tasks.store import TaskStore

MAX_ERROR = 500  # characters of a refusal, at most
MB = 1_000_000


def longest_run(text: str) -> int:
    """The longest run of one character: how much of a filler value an error shows."""
    return max((len(list(group)) for _, group in itertools.groupby(text)), default=0)


# -- the quoting helper ---------------------------------------------------------------------------------------------
def test_quote_shows_a_short_value_whole():
    assert limits.quote("worker-3") == "'worker-3'"
    assert limits.quote("it's a\\b") == "'it\\'s a\\\\b'"
    assert limits.quote(42) == "42"
    assert limits.quote(None) == "None"


@pytest.mark.parametrize("value", ["x" * MB, "\x00" * MB, "\U0010ffff" * MB, "\ud800" * 300, list(range(50_000))])
def test_quote_shows_at_most_200_characters_and_says_how_long_the_value_was(value):
    quoted = limits.quote(value)
    assert len(quoted) <= 260, quoted
    assert longest_run(quoted) <= limits.QUOTE_MAX
    length = len(value) if isinstance(value, str) else len(repr(value))
    assert f"({length:,} characters, the first" in quoted
    assert quoted.isprintable(), quoted  # control characters and surrogates are escaped
    quoted.encode("utf-8")


def test_quote_escapes_control_characters_so_the_model_sees_them():
    assert limits.quote("a\x00b\nc\td\x1b") == "'a\\x00b\\nc\\td\\x1b'"
    assert limits.quote("\u2028\ud800") == "'\\u2028\\ud800'"


def test_quote_cuts_by_what_it_shows_not_only_by_characters():
    quoted = limits.quote("\x00" * 100)  # each NUL shows as 4 characters
    assert quoted.startswith("'" + "\\x00" * 50 + "'...") and "(100 characters, the first 50 shown)" in quoted


def test_check_task_id_quotes_a_huge_id_short():
    with pytest.raises(InvalidTaskId) as caught:
        rules.check_task_id("x" * MB)
    message = str(caught.value)
    assert len(message) < MAX_ERROR and longest_run(message) == limits.QUOTE_MAX
    assert "1,000,000 characters" in message and "1-128 characters" in message


# -- the limit check ------------------------------------------------------------------------------------------------
def test_check_text_takes_exactly_the_limit():
    assert limits.check_text("note", "é" * 8000, 8000) == "é" * 8000
    with pytest.raises(UsageError) as caught:
        limits.check_text("note", "x" * 8001, 8000)
    message = str(caught.value)
    assert message.startswith("note is 8,001 characters, too long: At most 8,000 characters")
    assert longest_run(message) == limits.QUOTE_MAX and len(message) < MAX_ERROR


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("a\x00b", "a control character (U+0000) at character 2"),
        ("a\rb", "U+000D"),
        ("\x1b[31mred", "U+001B"),
        ("a\x7fb", "U+007F"),
        ("a\x85b", "U+0085"),
        ("a\ud800b", "a lone surrogate (U+D800)"),
    ],
)
def test_control_characters_are_refused_everywhere(value, what):
    for one_line in (False, True):
        with pytest.raises(UsageError, match=re.escape(what)):
            limits.check_text("summary", value, 4000, one_line=one_line)


@pytest.mark.parametrize(("value", "what"), [("a\nb", "a line break (U+000A)"), ("a\tb", "a tab"),
                                             ("a\u2028b", "a line break (U+2028)")])  # fmt: skip
def test_newline_and_tab_only_in_multi_line_text(value, what):
    assert limits.check_text("note", value, 8000) == value
    with pytest.raises(UsageError, match=re.escape(what)) as caught:
        limits.check_text("caller", value, 200, one_line=True)
    assert "One line of at most 200 characters" in str(caught.value)


def test_other_unicode_is_text():
    for value in ("naïve café", "日本語", "emoji 🎉", "zero\u200bwidth", "rtl \u202e"):
        assert limits.check_text("caller", value, 200, one_line=True) == value


def test_check_text_refuses_what_is_not_text():
    with pytest.raises(UsageError, match=r"caller \[1, 2\] is not allowed: it must be text"):
        limits.check_text("caller", [1, 2], 200, one_line=True)


def test_check_commit():
    for good in ("abcd", "ABC123", "a" * 40, "0" * 64):
        assert limits.check_commit("commit", good) == good
    for bad in ("abc", "a" * 65, "xyz1", "abc1 ", "ab\x00cd", "", "g" * MB):
        with pytest.raises(UsageError, match="4 to 64 hex digits") as caught:
            limits.check_commit("commit", bad)
        assert len(str(caught.value)) < MAX_ERROR and longest_run(str(caught.value)) <= limits.QUOTE_MAX


def test_check_count():
    limits.check_count("batch", ["a"] * 1000, 1000, "task ids")
    with pytest.raises(UsageError, match="batch holds 1,001 task ids, too many: at most 1,000 are allowed"):
        limits.check_count("batch", ["a"] * 1001, 1000, "task ids")


# -- each tool argument: its description states its limit, and check_arguments holds it exactly -------------------
def limit_of(description: str) -> tuple[str, int]:
    """(kind, limit) as an argument's description states it; the test fails for a string argument without one."""
    for kind, pattern in (("ids", r"At most ([\d,]+) ids"), ("globs", r"At most ([\d,]+) globs"),
                          ("id", r"1-(\d+) letters, digits"),
                          ("commit", r"\d+-(\d+) hex digits"), ("text", r"at most ([\d,]+) characters")):  # fmt: skip
        found = re.search(pattern, description, re.IGNORECASE)
        if found:
            return kind, int(found.group(1).replace(",", ""))
    raise AssertionError(f"no limit in {description!r}")


def string_arguments(tool) -> dict[str, dict]:
    """A tool's arguments that take text (or a list of it), but not a fixed choice such as status."""
    found = {}
    for name, schema in tool.input_schema.get("properties", {}).items():
        shapes = schema.get("anyOf", [schema])
        if any(shape.get("type") == "string" and "enum" not in shape for shape in shapes) or any(
            shape.get("type") == "array" for shape in shapes
        ):
            found[name] = schema
    return found


def one_line(description: str) -> bool:
    return description.startswith("One line") or "One line of" in description


def test_every_string_argument_documents_the_limit_it_is_held_to(root):
    tools = asyncio.run(mcp_server.build_server(make_queue(root)).list_tools())
    assert {tool.name for tool in tools} == set(rules.MCP_TOOLS)
    checked = 0
    for tool in tools:
        for name, schema in string_arguments(tool).items():
            kind, limit = limit_of(schema["description"])
            at, over = {"ids": (["a"] * limit, ["a"] * (limit + 1)), "globs": (["a"] * limit, ["a"] * (limit + 1)),
                        "id": ("a" * limit, "a" * (limit + 1)),
                        "commit": ("f" * limit, "f" * (limit + 1)), "text": ("x" * limit, "x" * (limit + 1))}[kind]  # fmt: skip
            mcp_server.check_arguments(**{name: at})
            with pytest.raises(HypervisorError) as caught:
                mcp_server.check_arguments(**{name: over})
            assert str(caught.value).startswith(name), (tool.name, name, str(caught.value))
            if kind == "text":
                multi = "\n" if one_line(schema["description"]) else "\x00"
                with pytest.raises(HypervisorError):
                    mcp_server.check_arguments(**{name: "a" + multi + "b"})
            checked += 1
    assert checked == 30  # the string arguments of the nine tools


# -- no write makes a task file unreadable --------------------------------------------------------------------------
def test_check_writable_takes_exactly_the_largest_file_the_store_reads(tmp_path):
    path = str(tmp_path / "t.md")
    head = "---\ntitle: t\n---\n"
    text = head + "x" * (taskfile.MAX_TASK_BYTES - len(head))
    assert taskfile.check_writable(text, path) == text.encode()
    with pytest.raises(TaskFileError) as caught:
        taskfile.check_writable(text + "é", path)
    message = str(caught.value)
    assert message.startswith(f"{path}: this change would make the file 2,097,154 bytes; a task file may hold at "
                              "most 2,097,152.")  # fmt: skip
    assert message.endswith("Nothing was written")
    with pytest.raises(TaskFileError, match=r"a NUL character \(\\x00\)"):
        taskfile.check_writable(head + "a\x00b", path)
    with pytest.raises(TaskFileError, match=r"'\\udc80'.* not text UTF-8 can hold"):
        taskfile.check_writable(head + "a\udc80b", path)


def near_limit(root, task_id: str, room: int, **fields) -> str:
    """A task file `room` bytes short of the largest the store reads; its path."""
    path = write_task(root, task_id, body="", **fields)
    need = taskfile.MAX_TASK_BYTES - room - path.stat().st_size
    line = b"An old note that someone pasted in, long ago, with some detail.\n"
    with open(path, "ab") as handle:
        handle.write((line * (need // len(line) + 1))[:need])
    assert path.stat().st_size == taskfile.MAX_TASK_BYTES - room
    return str(path)


def test_an_edit_that_would_outgrow_the_file_is_refused_before_anything_is_written(root):
    path = near_limit(root, "big", 100, status="active")
    before = open(path, "rb").read()
    store = TaskStore(str(root))

    def grow(summary, doc):
        doc.append_to_section("## Notes", "- " + "y" * 200)

    with pytest.raises(TaskFileError, match="this change would make the file 2,097,"):
        store.update("big", grow)
    assert open(path, "rb").read() == before
    with pytest.raises(TaskFileError, match="would make the file"):
        store.update("big", lambda summary, doc: doc.set("blocked_reason", "z" * 200))
    store.update("big", lambda summary, doc: doc.set("assignee", "w1"))  # what still fits is written
    assert taskfile.read_doc(path).data["assignee"] == "w1"


def test_a_claim_whose_file_cannot_take_it_leaves_no_claim(root):
    """The claim record is written first and dropped again when the file refuses the claim's fields: no claim
    outlives a token that was never handed out."""
    from hypervisor.claims.queue import TaskQueue

    path = near_limit(root, "big", 20, status="active")
    before = open(path, "rb").read()
    queue = TaskQueue(TaskStore(str(root)))
    with pytest.raises(TaskFileError, match="would make the file"):
        queue.claim_next("a-worker-with-a-long-name", task_id="big")
    assert open(path, "rb").read() == before and queue.claim_records() == {}


def test_the_store_itself_refuses_to_write_an_unreadable_file(root):
    """TaskStore.write checks the whole rendered file, whatever edited the document."""
    path = write_task(root, "t", status="active")
    store = TaskStore(str(root))
    summary, doc = store.read(store.find("t"))
    doc.body += "a\x00b"  # not through an edit method: nothing checked it yet
    with store.task_lock("t"), pytest.raises(TaskFileError, match="NUL"):
        store.write(doc)
    assert b"\x00" not in path.read_bytes()
    doc.body = "x" * taskfile.MAX_TASK_BYTES
    with store.task_lock("t"), pytest.raises(TaskFileError, match="would make the file"):
        store.write(doc)
    assert store.summaries()[1] == [] and len(path.read_bytes()) < 100


# -- the real server, over stdio, refusing 50+ bad calls in one session ---------------------------------------------
ALLOWED = ("allowed", "at most", "should be", "required", "must", "one of", "hex digits", "no task with id",
           "the tools are", "complete it", "use `hypervisor", "Nothing was written")  # fmt: skip
BASE = {"list_tasks": {}, "get_task": {"id": "a"}, "claim_next_task": {"caller": "w9"}, "update_task": {"id": "a"},
        "complete_task": {"id": "a", "summary": "did it", "caller": "w9"},
        "block_task": {"id": "a", "reason": "stuck", "caller": "w9"}, "release_task": {"id": "a", "caller": "w9"},
        "get_index_stats": {}, "create_task": {"title": "a follow-up"}}  # fmt: skip
BAD_IDS = [
    ("x" * MB, ["1,000,000 characters", "is not allowed", "1-128 characters"]),
    ("x" * 129, ["is not allowed"]),
    ("../etc/passwd", ["'../etc/passwd' is not allowed"]),
    ("a/b", ["is not allowed"]),
    ("a..b", ["no '..'"]),
    (".hidden", ["starts with a letter or digit"]),
    ("a\x00b", ["'a\\x00b' is not allowed"]),
    ("", ["'' is not allowed"]),
]


def bad_calls(tools: dict) -> list[tuple[str, dict, list[str]]]:
    """(tool, arguments, what the refusal must say) for every bad call: generated for each string argument of each
    tool from its description, then wrong types, numbers out of range, and unknown names."""
    calls = []
    for tool_name, tool in tools.items():
        for name, schema in string_arguments(tool).items():
            kind, limit = limit_of(schema["description"])

            def call(value, fragments, name=name, tool_name=tool_name):
                calls.append((tool_name, {**BASE[tool_name], name: value}, fragments))

            if kind == "id":
                for value, fragments in BAD_IDS:
                    call(value, [f"{name}: task id", *fragments])
                call("no-such-task", ["no task with id 'no-such-task'"])
            elif kind == "ids":
                call(["a"] * (limit + 1), [f"{name} holds {limit + 1:,} task ids, too many: at most {limit:,}"])
                call(["a", "../x"], [f"{name}[1]: task id '../x' is not allowed"])
                call(["x" * MB], [f"{name}[0]: task id", "1,000,000 characters"])
                call(list(range(5000)), [f"argument {name}[0]: Input should be a valid string", "4,997 more"])
                call("not-a-list", [f"argument {name}: Input should be a valid list"])
            elif kind == "globs":
                call(["a"] * (limit + 1), [f"{name} holds {limit + 1:,} globs, too many: at most {limit:,}"])
                call(["src/**", "a\nb"], [f"{name}[1] holds a line break (U+000A)", "One line of at most"])
                call(["x" * MB], [f"{name}[0] is 1,000,000 characters, too long"])
                call("not-a-list", [f"argument {name}: Input should be a valid list"])
            elif kind == "commit":
                for value in ("xyz1", "abc", "f" * (limit + 1), "ab\x00cd", "g" * MB):
                    call(value, ["commit", "is not allowed", "4 to 64 hex digits"])
            else:
                rule = limits.describe(limit, one_line(schema["description"]))
                for value in ("x" * (limit + 1), "x" * MB):
                    call(value, [f"{name} is {len(value):,} characters, too long: {rule}"])
                call("ok\x00x", [f"{name} holds a control character (U+0000)", "'ok\\x00x'"])
                call("ok\x1b[31m", ["(U+001B)", "'ok\\x1b[31m'"])
                call("ok\rx", ["(U+000D)"])
                if one_line(schema["description"]):
                    call("a\nb", [f"{name} holds a line break (U+000A)", "One line of at most"])
                    call("a\tb", [f"{name} holds a tab"])
                call(5, [f"argument {name}: Input should be a valid string, not 5"])
    calls += [
        ("list_tasks", {"limit": 0}, ["argument limit: Input should be greater than or equal to 1, not 0"]),
        ("list_tasks", {"limit": 1001}, ["less than or equal to 1000"]),
        ("list_tasks", {"limit": -5}, ["greater than or equal to 1"]),
        ("list_tasks", {"limit": "x" * MB}, ["argument limit: Input should be a valid integer"]),
        ("list_tasks", {"ready": "maybe"}, ["argument ready: Input should be a valid boolean"]),
        ("list_tasks", {"status": "finished"}, ["argument status: Input should be 'inbox'", "not 'finished'"]),
        ("list_tasks", {"status": "x" * MB}, ["argument status: Input should be"]),
        ("update_task", {"id": "a", "priority": "high"}, ["argument priority: Input should be a valid integer"]),
        ("update_task", {"id": "a", "priority": 9}, ["argument priority: Input should be less than or equal to 4"]),
        ("update_task", {"id": "a", "priority": -1}, ["greater than or equal to 0"]),
        ("update_task", {"id": "a", "priority": 2.5}, ["argument priority: Input should be a valid integer"]),
        (
            "update_task",
            {"id": "a", "status": "done"},
            ["update_task does not set done, which logs an outcome: use `hypervisor complete a"],
        ),
        ("update_task", {"id": "a", "status": "x" * MB}, ["argument status: Input should be"]),
        ("get_index_stats", {"include_projects": {"a": "b" * MB}}, ["argument include_projects: Input should be"]),
        ("get_task", {}, ["argument id is missing: it is required"]),
        ("get_task", {"id": ["a"] * 1000}, ["argument id: Input should be a valid string"]),
        ("complete_task", {"id": "a", "caller": "w9"}, ["argument summary is missing: it is required"]),
        ("claim_next_task", {"caller": ["x" * 1000] * 1000}, ["argument caller: Input should be a valid string"]),
        ("claim_next_task", {"task_id": "a"}, ["argument caller is missing"]),
        ("no_such_tool", {}, ["there is no tool 'no_such_tool'; the tools are list_tasks"]),
        ("t" * MB, {}, ["there is no tool 'ttt", "1,000,000 characters"]),
    ]
    return calls


def refusal(result, fragments: list[str]) -> str:
    """The text of a tool error, checked: short, quoting at most 200 characters of a value, saying what is allowed."""
    assert result.is_error, result.content[0].text[:300]
    text = result.content[0].text
    assert len(text) <= MAX_ERROR, (len(text), text)
    assert longest_run(text) <= limits.QUOTE_MAX, text
    assert text.isprintable(), text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    assert any(word.lower() in text.lower() for word in ALLOWED), text
    return text


async def bad_calls_scenario(root, backend, token: str) -> list[int]:
    async with Client(server_params(root, backend)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        lengths = []
        for tool, arguments, fragments in bad_calls(tools):
            text = refusal(await client.call_tool(tool, arguments), fragments)
            lengths.append(len(text))
        # Changes that would push a task file past 2 MiB: refused, the claim kept.
        too_big = [
            "this change would make the file 2,",
            "a task file may hold at most 2,097,152",
            "Nothing was written",
        ]
        for tool, arguments in (
            ("update_task", {"id": "big", "claim_token": token, "note": "n" * 7000}),
            ("complete_task", {"id": "big", "claim_token": token, "summary": "s" * 4000}),
            ("block_task", {"id": "big", "claim_token": token, "reason": "r" * 4000}),
        ):
            lengths.append(len(refusal(await client.call_tool(tool, arguments), too_big)))
        # Still serving, nothing changed.
        big = structured(await client.call_tool("get_task", {"id": "big"}))
        assert big["status"] == "in_progress" and big["claim"]["live"] and big["claim"]["caller"] == "w1"
        listed = structured(await client.call_tool("list_tasks", {}))
        assert sorted(task["id"] for task in listed["tasks"]) == ["a", "b", "big"]
        stats = structured(await client.call_tool("get_index_stats", {}))
        assert stats["total"] == 3 and stats["invalid"] == 0 and stats["claimed"] == 1
        return lengths


def task_files(root) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in root.glob("*.md")}


def test_bad_calls_over_stdio_are_short_tool_errors_and_change_nothing(root, backend):
    write_task(root, "a", status="active", priority=1)
    write_task(root, "b", status="active")
    near_limit(root, "big", 3500, status="active", priority=0)
    token = make_queue(root, backend).claim_next("w1", task_id="big")["claim_token"]
    before = task_files(root)
    lengths = asyncio.run(bad_calls_scenario(root, backend, token))
    assert len(lengths) >= 150, len(lengths)
    print(f"\n{len(lengths)} bad calls refused; the longest refusal is {max(lengths)} characters")
    assert task_files(root) == before
    run_cli("validate", "--tasks", str(root), check=0)

    async def still_writes():  # a good write after all of that, in a new session
        async with Client(server_params(root, backend)) as client:
            noted = await client.call_tool("update_task", {"id": "a", "note": "fine\tnote"})
            assert structured(noted)["status"] == "active"

    asyncio.run(still_writes())
    assert "fine note" in (root / "a.md").read_text()


# -- the server's view is never staler than a stat ------------------------------------------------------------------
async def behind_the_servers_back(root, backend):
    async with Client(server_params(root, backend)) as client:

        async def call(tool, arguments):
            return await client.call_tool(tool, arguments)

        async def ids():
            return [task["id"] for task in structured(await call("list_tasks", {}))["tasks"]]

        async def stats():
            return structured(await call("get_index_stats", {}))

        assert await ids() == ["a", "b"]
        assert (await stats())["total"] == 2
        path_a, path_b = root / "a.md", root / "b.md"

        # Edited (another size): each kind of read sees it on its very first call after the change.
        write_task(root, "b", status="review", title="Bee")
        assert structured(await call("get_task", {"id": "b"}))["status"] == "review"
        write_task(root, "b", status="blocked", title="Bee")
        assert (await stats())["by_status"]["blocked"] == 1
        write_task(root, "b", status="cancelled", title="Bee")
        assert [t["status"] for t in structured(await call("list_tasks", {}))["tasks"]] == ["active", "cancelled"]

        # Edited to the same size: a stat still tells (here its mtime; the file keeps its inode).
        text = path_a.read_text()
        stat = path_a.stat()
        path_a.write_text(text.replace("priority: 1", "priority: 3"))
        os.utime(path_a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
        assert path_a.stat().st_size == stat.st_size
        listed = structured(await call("list_tasks", {}))["tasks"]
        assert [(t["id"], t["priority"]) for t in listed] == [("b", 2), ("a", 3)]

        # Made invalid: YAML that does not parse, then binary.
        path_b.write_text("---\nstatus: [unclosed\n---\nbody\n")
        counted = await stats()
        assert counted["invalid"] == 1 and counted["total"] == 1
        assert "frontmatter is not valid YAML" in (await call("get_task", {"id": "b"})).content[0].text
        assert await ids() == ["a"]
        path_b.write_bytes(b"---\nstatus: active\n---\nbin\x00ary\n")
        assert "binary" in (await call("get_task", {"id": "b"})).content[0].text
        assert (await stats())["invalid"] == 1

        # Deleted.
        path_a.unlink()
        assert "no task with id 'a'" in (await call("get_task", {"id": "a"})).content[0].text
        path_b.unlink()
        assert await ids() == []
        assert (await stats())["total"] == 0 and (await stats())["invalid"] == 0

        # Added.
        write_task(root, "c", status="active", folder="sub")
        counted = await stats()
        assert counted["total"] == 1 and counted["ready"] == 1
        assert structured(await call("get_task", {"id": "c"}))["path"] == "sub/c.md"
        write_task(root, "d", status="active")
        assert await ids() == ["c", "d"]

        # Written by the server, then changed behind it.
        await call("update_task", {"id": "d", "note": "mine"})
        write_task(root, "d", status="review")
        assert structured(await call("get_task", {"id": "d"}))["status"] == "review"


def test_the_server_sees_every_change_made_behind_it(root, backend):
    write_task(root, "a", status="active", priority=1)
    write_task(root, "b", status="active", priority=2)
    asyncio.run(behind_the_servers_back(root, backend))
