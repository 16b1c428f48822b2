"""Making tasks: `hypervisor new` (click's CliRunner for its messages, real processes for races and stdin) and the MCP
tool create_task through the official SDK's client, both by the one rule in tasks/creation.py (issue 16, point 1)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import pytest
from click.testing import CliRunner
from conftest import HYPERVISOR, make_queue, run_cli, write_task
from mcp import Client
from test_mcp_server import error_text, server_params, structured

from hypervisor.core import fsutil, rules
from hypervisor.core.errors import ClaimRefused, UsageError
from hypervisor.core.timeutil import parse_iso
from hypervisor.frontends.cli import cli
from hypervisor.tasks import creation, taskfile
from hypervisor.tasks.store import TaskStore
from hypervisor.tasks.validation import check_store

HANG_GUARD = 120.0  # seconds a wait may take before the test fails; never a claim about speed

HOSTILE_TITLES = [
    "Fix: the login page",
    "a: b # c",
    "#hashtag first",
    "'single' and \"double\" quotes",
    "- leading dash",
    "--- three dashes",
    "...",
    "yes",
    "null",
    "~",
    "123",
    "0x1F",
    "1e3",
    "2026-12-02",
    "[not, a, list]",
    "{not: a map}",
    "*alias",
    "&anchor",
    "!tag value",
    "%directive",
    "@at `backtick`",
    "| pipe",
    "> folded",
    "? question",
    "ünïcödé ✓ 日本語 🎉",
    "\u202eright-to-left",
    "trailing colon:",
    "back\\slash",
]


def invoke(*args: str, stdin: str | None = None):
    return CliRunner().invoke(cli, ["new", *args], input=stdin)


def problems_of(root) -> list[dict]:
    return check_store(TaskStore(str(root)))[0]


# -- the id ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Fix the login page!", "fix-the-login-page"),
        ("  Crème brûlée: état 2  ", "creme-brulee-etat-2"),
        ("日本語 🎉", creation.FALLBACK_SLUG),
        ("--- ...", creation.FALLBACK_SLUG),
        ("Don't rm -rf /", "don-t-rm-rf"),
        ("a" * 100, "a" * creation.SLUG_MAX),
        (("word " * 30).strip(), "-".join(["word"] * 12)),  # cut at a word: 12 words are 59 characters
    ],
)
def test_the_slug_of_a_title(title, expected):
    assert creation.slug(title) == expected


@pytest.mark.parametrize("title", HOSTILE_TITLES)
def test_every_slug_is_a_legal_id_with_room_for_a_suffix(title):
    made = creation.slug(title)
    assert rules.is_task_id(made) and len(made) <= creation.SLUG_MAX
    assert rules.is_task_id(f"{made}-10000")


def test_a_taken_id_gets_the_first_free_suffix_whatever_holds_it(root):
    """Taken: a file of that name anywhere under the root (valid or not), or an id a file of another name holds."""
    write_task(root, "same-title", folder="deep/er", title="elsewhere")
    write_task(root, "other-name", id="same-title-2", title="holds the id")
    (root / "same-title-3.md").write_text("not a task file at all\n")
    store = TaskStore(str(root))
    summary, _ = creation.create(store, "Same title")
    assert summary["id"] == "same-title-4" and summary["path"] == "same-title-4.md"
    assert creation.create(store, "Same title")[0]["id"] == "same-title-5"


def test_a_file_made_meanwhile_by_hand_is_never_overwritten(root, monkeypatch):
    """A person's file that lands after the index was read: the exclusive create loses to it and moves on."""
    store = TaskStore(str(root))
    store.refresh()
    real_refresh = store.refresh

    def person_saves_first(*args, **kwargs):
        result = real_refresh(*args, **kwargs)
        (root / "race.md").write_text("---\ntitle: mine\n---\nmy words\n")
        return result

    monkeypatch.setattr(store, "refresh", person_saves_first)
    summary, _ = creation.create(store, "Race")
    assert summary["id"] == "race-2"
    assert (root / "race.md").read_text() == "---\ntitle: mine\n---\nmy words\n"


# -- the file -------------------------------------------------------------------------------------------------------
def test_the_file_holds_checked_fields_and_the_body(root):
    store = TaskStore(str(root))
    summary, doc = creation.create(store, "Fix the login page", project="web", priority="1", depends_on=["a", "b", "a"],
                                   scope=["src/auth/**", " docs/ "], tags=["bug"], status="inbox",
                                   body="Users with a + get a 500.")  # fmt: skip
    text = (root / "fix-the-login-page.md").read_text()
    data = taskfile.parse_text(text, "x").data
    assert list(data) == ["id", "title", "status", "priority", "project", "depends_on", "scope", "tags", "created"]
    assert data["depends_on"] == ["a", "b"] and data["scope"] == ["src/auth/**", "docs/"] and data["priority"] == 1
    assert data["created"].endswith("Z") and abs(time.time() - parse_iso(data["created"])) < 3600
    assert text.endswith("---\n\nUsers with a + get a 500.\n")
    assert summary["status"] == "inbox" and doc.data == data
    assert problems_of(root) == []


def test_hostile_titles_round_trip_and_validate(root):
    store = TaskStore(str(root))
    made = [creation.create(store, title)[0] for title in HOSTILE_TITLES]
    assert len({summary["id"] for summary in made}) == len(HOSTILE_TITLES)
    for title, summary in zip(HOSTILE_TITLES, made, strict=True):
        data = taskfile.read_doc(str(root / summary["path"])).data
        assert data["title"] == title.strip() and data["id"] == summary["id"], (title, data)
    assert problems_of(root) == []
    assert run_cli("validate", "--tasks", str(root), check=0).stderr.startswith(f"{len(HOSTILE_TITLES)} task files")


def test_a_body_that_looks_like_frontmatter_stays_body(root):
    body = "---\ntitle: not this\nstatus: done\n---\n\n## Worker log\n\ttabbed\r\nwindows line\n"
    summary, doc = creation.create(TaskStore(str(root)), "Tricky body", body=body)
    again = taskfile.read_doc(str(root / summary["path"]))
    assert again.data["title"] == "Tricky body" and again.data["status"] == "active"
    assert again.body == "\n" + body
    assert problems_of(root) == []


# -- `hypervisor new`: its messages ----------------------------------------------------------------------------------
def test_new_prints_the_id_and_the_path(root):
    result = invoke("Write the README", "--tasks", str(root))
    assert result.exit_code == 0, result.output
    assert result.stdout == "write-the-readme\n"
    assert f"made {root / 'write-the-readme.md'}" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--id", "../etc/passwd"], ["id '../etc/passwd' is not allowed", "letters, digits", "leave the id out"]),
        (["--id", "a" * 500], ["id 'aaa", "(500 characters, the first 200 shown)", "1-128 characters"]),
        (["--priority", "9"], ["priority '9' is not allowed: use an integer 0 (highest) to 4"]),
        (["--priority", "high"], ["priority 'high' is not allowed"]),
        (["--priority", "-1"], ["priority '-1' is not allowed"]),
        (["--depends-on", "ok,a b"], ["depends_on[1]: task id 'a b' is not allowed"]),
        (["--depends-on", "x..y"], ["depends_on[0]: task id 'x..y' is not allowed", "no '..'"]),
        (["--scope", "src/**", "--scope", "a\tb"], ["scope[1] holds a tab"]),
        (["--project", "   "], ["project is empty"]),
        (["--id", "me", "--depends-on", "me"], ["depends_on names the task itself (me)"]),
    ],
)
def test_a_bad_value_is_refused_naming_the_field_the_value_and_what_is_allowed(root, args, fragments):
    result = invoke("A title", "--tasks", str(root), *args)
    assert result.exit_code == 2, result.output
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert result.stderr.startswith("hypervisor: ") and len(result.stderr) < 600 and result.stdout == ""
    assert not list(root.glob("*.md"))


@pytest.mark.parametrize(("title", "fragment"), [("", "title is empty"), ("   ", "title is empty"),
                                                 ("a\tb", "title holds a tab"), ("a\x1bb", "(U+001B)"),
                                                 ("x" * 301, "title is 301 characters, too long")])  # fmt: skip
def test_a_bad_title_is_refused(root, title, fragment):
    result = invoke(title, "--tasks", str(root))
    assert result.exit_code == 2 and fragment in result.stderr, result.output
    assert not list(root.glob("*.md"))


def test_usage_errors_are_clicks_exit_2(root):
    assert invoke("--tasks", str(root)).exit_code == 2  # no TITLE
    wrong = invoke("t", "--status", "done", "--tasks", str(root))
    assert wrong.exit_code == 2 and "'done' is not one of 'inbox', 'active'" in wrong.stderr


def test_an_explicit_id_that_exists_is_refused_and_the_advice_works(root):
    write_task(root, "fix-login", folder="web", title="the first")
    taken = invoke("Fix login", "--id", "fix-login", "--tasks", str(root))
    assert taken.exit_code == 1, taken.output
    assert f"id 'fix-login' is taken: {root / 'web' / 'fix-login.md'}" in taken.stderr
    assert "pick another id, or leave the id out" in taken.stderr
    assert taken.stdout == ""
    another = invoke("Fix login", "--id", "fix-login-again", "--tasks", str(root))
    assert another.exit_code == 0 and another.stdout == "fix-login-again\n"
    omitted = invoke("Fix login", "--tasks", str(root))
    assert omitted.exit_code == 0 and omitted.stdout == "fix-login-2\n"
    assert (root / "web" / "fix-login.md").read_text().count("the first") == 1
    assert problems_of(root) == []


def test_a_missing_dependency_is_said_but_not_refused(root):
    write_task(root, "exists", status="done")
    result = invoke("Later", "--depends-on", "exists,not-yet", "--tasks", str(root))
    assert result.exit_code == 0 and result.stdout == "later\n"
    assert "waits on not-yet, which no task has yet" in result.stderr


def test_json_is_the_task_as_show_json_prints_it(root):
    made = invoke("Shown", "--project", "p", "--tag", "a", "--tag", "b", "--body", "text", "--json", "--tasks",
                  str(root))  # fmt: skip
    assert made.exit_code == 0, made.output
    shown = CliRunner().invoke(cli, ["show", "shown", "--json", "--tasks", str(root)])
    assert json.loads(made.stdout) == json.loads(shown.stdout)
    assert json.loads(made.stdout)["frontmatter"]["tags"] == ["a", "b"]


def test_init_names_new_as_the_next_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYPERVISOR_TASKS", raising=False)
    result = CliRunner().invoke(cli, ["init"])
    assert result.exit_code == 0 and '`hypervisor new "My first task"' in result.output, result.output
    followed = CliRunner().invoke(cli, ["new", "My first task", "--body", "what is to be done"])
    assert followed.exit_code == 0 and (tmp_path / "tasks" / "my-first-task.md").exists(), followed.output


# -- `hypervisor new` as real processes -----------------------------------------------------------------------------
def test_body_dash_reads_stdin_and_list_sees_the_task_at_once(root):
    body = "From stdin: ünï\n\n- [ ] a checklist\n"
    made = subprocess.run([*HYPERVISOR, "new", "Piped", "--body", "-", "--tasks", str(root)], input=body,
                          capture_output=True, text=True, timeout=HANG_GUARD)  # fmt: skip
    assert made.returncode == 0 and made.stdout == "piped\n", made.stderr
    assert taskfile.read_doc(str(root / "piped.md")).body == "\n" + body
    listed = run_cli("list", "--json", "--tasks", str(root), check=0)
    assert [task["id"] for task in json.loads(listed.stdout)] == ["piped"]


def lock_waiters(path: str) -> int:
    """How many processes wait for the flock on `path` (Linux /proc/locks: a waiter's line has '->')."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as handle:
        return sum(1 for line in handle if "->" in line and f":{ino} " in line)


def test_eight_concurrent_news_of_one_title_make_eight_valid_files(root, cpu_hog):
    """All eight are held at the creation lock until every one waits on it, then let go at once."""
    store = TaskStore(str(root))
    lock = os.path.join(store.ensure_state(), creation.CREATE_LOCK)
    with fsutil.locked(lock):
        procs = [subprocess.Popen([*HYPERVISOR, "new", "Same title", "--tasks", str(root)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(8)]  # fmt: skip
        deadline = time.monotonic() + HANG_GUARD
        while lock_waiters(lock) < 8:
            assert time.monotonic() < deadline, "the eight processes never all reached the lock"
            assert all(proc.poll() is None for proc in procs), [proc.communicate() for proc in procs]
            time.sleep(0.01)
    outputs = [proc.communicate(timeout=HANG_GUARD) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 8, outputs
    ids = sorted(out.strip() for out, _ in outputs)
    assert ids == sorted(["same-title", *(f"same-title-{n}" for n in range(2, 9))])
    assert sorted(path.stem for path in root.glob("*.md")) == ids
    for task_id in ids:
        data = taskfile.read_doc(str(root / f"{task_id}.md")).data
        assert data["id"] == task_id and data["title"] == "Same title"
    assert run_cli("validate", "--tasks", str(root), check=0).stderr.startswith("8 task files checked, 0 invalid")
    assert len(json.loads(run_cli("list", "--json", "--tasks", str(root), check=0).stdout)) == 8


def test_a_new_killed_before_its_file_is_in_place_leaves_no_task(root):
    killed = run_cli("new", "Killed", "--tasks", str(root), env={fsutil.FAULT_ENV: "create-before-link"})
    assert killed.returncode == -9, killed
    assert not list(root.glob("*.md")) and problems_of(root) == []
    again = run_cli("new", "Killed", "--tasks", str(root), check=0)
    assert again.stdout == "killed\n"


# -- create_task through the SDK client -----------------------------------------------------------------------------
async def follow_up_scenario(root, backend):
    async with Client(server_params(root, backend)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert "create_task" in tools and "do not claim it" in tools["create_task"].description
        parent = structured(await client.call_tool("claim_next_task", {"caller": "w1", "task_id": "parent"}))
        made = structured(await client.call_tool("create_task", {
            "title": "Fix: the \"other\" module #2", "caller": "w1", "priority": 1, "depends_on": ["parent"],
            "scope": ["src/other/**"], "body": "Found while doing parent.\n\n---\nnot frontmatter\n"}))  # fmt: skip
        assert made["id"] == "fix-the-other-module-2" and made["status"] == "inbox" and made["claim"] is None
        assert made["frontmatter"]["created_by"] == "w1" and made["frontmatter"]["discovered_from"] == "parent"
        assert made["depends_on"] == ["parent"] and made["scope"] == ["src/other/**"] and made["priority"] == 1
        plain = structured(await client.call_tool("create_task", {"title": "Unrelated", "project": "ops"}))
        assert "created_by" not in plain["frontmatter"] and plain["project"] == "ops"
        listed = structured(await client.call_tool("list_tasks", {}))
        assert {task["id"] for task in listed["tasks"]} == {"parent", "fix-the-other-module-2", "unrelated"}
        return parent["claim_token"], made["id"]


async def not_for_its_creator(root, backend, token, follow_up):
    async with Client(server_params(root, backend)) as client:
        # The follow-up (priority 1) is first in the queue and waits on nothing; its creator still holds parent.
        refused = error_text(await client.call_tool("claim_next_task", {"caller": "w1", "task_id": follow_up}))
        assert f"task {follow_up} is a follow-up you filed while working on task parent" in refused
        assert "Finish parent first" in refused
        mine = structured(await client.call_tool("claim_next_task", {"caller": "w1"}))
        assert mine["id"] == "unrelated", "the creator's next claim skipped its own follow-up"
        await client.call_tool("release_task", {"id": "unrelated", "caller": "w1"})
        # The advice, followed: finish parent, then the follow-up may be claimed.
        structured(await client.call_tool("complete_task", {"id": "parent", "claim_token": token, "summary": "ok"}))
        taken = structured(await client.call_tool("claim_next_task", {"caller": "w1", "task_id": follow_up}))
        assert taken["id"] == follow_up and taken["claim_token"]


def test_create_task_over_stdio_files_a_follow_up_its_creator_is_not_handed(root, backend):
    write_task(root, "parent", status="active", title="The parent")
    token, follow_up = asyncio.run(follow_up_scenario(root, backend))
    assert problems_of(root) == []
    data = taskfile.read_doc(str(root / f"{follow_up}.md")).data
    assert data["title"] == 'Fix: the "other" module #2' and data["discovered_from"] == "parent"
    # Drop the dependency by hand so only the creator rule stands between w1 and the follow-up.
    path = root / f"{follow_up}.md"
    path.write_text(path.read_text().replace("depends_on:\n- parent\n", ""))
    asyncio.run(not_for_its_creator(root, backend, token, follow_up))


def test_another_worker_may_take_the_follow_up_at_once(root):
    write_task(root, "parent", status="active")
    queue = make_queue(root)
    queue.claim_next("w1", task_id="parent")
    summary, _ = creation.create(queue.store, "Follow up", created_by="w1", discovered_from="parent", status="inbox")
    assert queue.claim_next("w2")["id"] == summary["id"]


async def supervised_create(root, token):
    params = server_params(root)
    params.env.update(HYPERVISOR_TASK_ID="mine", HYPERVISOR_CLAIM_TOKEN=token, HYPERVISOR_WORKER="1")
    async with Client(params) as client:
        made = structured(await client.call_tool("create_task", {"title": "Found by the worker", "caller": "model"}))
        handed = structured(await client.call_tool("claim_next_task", {"caller": "model"}))
        return made, handed


def test_a_supervised_workers_follow_up_records_the_supervisors_claim(root):
    write_task(root, "mine", status="active")
    token = make_queue(root).claim_next("sup-w1", task_id="mine")["claim_token"]
    made, handed = asyncio.run(supervised_create(root, token))
    assert made["frontmatter"]["discovered_from"] == "mine" and made["frontmatter"]["created_by"] == "sup-w1"
    assert handed["id"] == "mine"
    with pytest.raises(ClaimRefused, match="follow-up you filed"):
        make_queue(root).claim_next("sup-w1", task_id=made["id"])


async def bad_creates(root):
    async with Client(server_params(root)) as client:
        texts = []
        for arguments in ({"title": "a\x00b"}, {"title": "x" * 301}, {"title": "  "}, {"title": "t", "body": "a\rb"},
                          {"title": "t", "depends_on": ["ok", "../x"]}, {"title": "t", "scope": ["a\nb"]},
                          {"title": "t", "priority": 7}, {"title": "t", "caller": "a\tb"},
                          {"title": "t", "depends_on": ["a"] * 101}, {}):  # fmt: skip
            texts.append(error_text(await client.call_tool("create_task", arguments)))
        return texts


def test_create_task_refuses_bad_arguments_and_writes_nothing(root):
    texts = asyncio.run(bad_creates(root))
    expected = ["title holds a control character (U+0000)", "title is 301 characters, too long",
                "title is empty", "body holds a control character (U+000D)", "depends_on[1]: task id '../x'",
                "scope[0] holds a line break", "argument priority: Input should be less than or equal to 4",
                "caller holds a tab", "depends_on holds 101 task ids, too many: at most 100",
                "argument title is missing"]  # fmt: skip
    for fragment, text in zip(expected, texts, strict=True):
        assert fragment in text and len(text) < 500, (fragment, text)
    assert not list(root.glob("*.md"))


def test_a_priority_is_an_integer_0_to_4_also_as_text():
    for bad in (True, 2.0, "2.5", "", "5", 5, [1]):
        with pytest.raises(UsageError, match="is not allowed: use an integer 0"):
            creation.check_priority(bad)
    assert creation.check_priority(" 3 ") == 3 and creation.check_priority(0) == 0
