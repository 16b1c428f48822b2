"""`hypervisor reopen ID [--reason R] [--reset-attempts]` and update_task(status='active') (issue 14, point 4): a
blocked, dead-lettered, done, cancelled, review, stranded or hand-set in_progress task goes back to active, with a
line in its worker log and a `reopened` event, and is then claimable and completable; a claimed, active or inbox task
is refused (exit 1)."""

from __future__ import annotations

import asyncio
import getpass
import json

import pytest
from conftest import make_queue, run_cli, write_task
from mcp import Client
from test_mcp_server import error_text, structured
from test_refusals import server_params

from hypervisor.core.config import load_config
from hypervisor.core.errors import ClaimRefused
from hypervisor.frontends.mcp_server import dispatch_update
from hypervisor.tasks import taskfile

REASON = "the API key is in the vault now"


class Project:
    def __init__(self, path) -> None:
        self.path = path
        self.root = path / "tasks"
        self.root.mkdir(parents=True)
        (path / ".hypervisor.yaml").write_text("tasks: tasks\nmax_attempts: 3\n")
        self.queue = make_queue(self.root, "file", load_config(str(path / ".hypervisor.yaml")))

    def cli(self, *args: str, code: int = 0):
        return run_cli(*args, cwd=self.path, check=code)

    def data(self, task_id: str) -> dict:
        return taskfile.read_doc(str(self.root / f"{task_id}.md")).data

    def body(self, task_id: str) -> str:
        return (self.root / f"{task_id}.md").read_text()

    def claim(self, task_id: str, caller: str = "w1") -> str:
        return self.queue.claim_next(caller, task_id=task_id)["claim_token"]


# -- each state, made as it happens ----------------------------------------------------------------------------------
def blocked(p: Project, tid: str) -> None:
    write_task(p.root, tid, status="active")
    p.queue.block(tid, token=p.claim(tid), reason="needs the API key")


def dead_lettered(p: Project, tid: str) -> None:
    write_task(p.root, tid, status="active")
    for caller in ("w1", "w2", "w3"):
        p.queue.release(tid, token=p.claim(tid, caller))
    with pytest.raises(ClaimRefused, match="moved to blocked"):
        p.claim(tid, "w4")
    assert p.data(tid)["blocked_reason"] == "max_attempts"


def ended_by(status: str):
    def setup(p: Project, tid: str) -> None:
        write_task(p.root, tid, status="active")
        token = p.claim(tid)
        if status == "done":
            p.queue.complete(tid, token=token, summary="shipped")
        else:
            dispatch_update(p.queue, tid, token=token, status=status)

    return setup


def stranded(p: Project, tid: str) -> None:
    write_task(p.root, tid, status="active")
    assert p.queue.claims.drop(tid, p.claim(tid))  # the record lost (a Redis restart): the file says in_progress


def by_hand(p: Project, tid: str) -> None:
    write_task(p.root, tid, status="in_progress", assignee="ann")


# (name, setup, status before, --reset-attempts, attempts after, worker-log text after the reason)
STATES = [
    ("blocked", blocked, "blocked", False, 1, ""),
    ("dead-letter", dead_lettered, "blocked", False, 2, " (attempts 3 -> 2; 1 left)"),
    ("dead-letter-reset", dead_lettered, "blocked", True, 0, " (attempts 3 -> 0; 3 left)"),
    ("done", ended_by("done"), "done", False, 1, ""),
    ("cancelled", ended_by("cancelled"), "cancelled", False, 1, ""),
    ("review", ended_by("review"), "review", False, 1, ""),
    ("stranded", stranded, "in_progress", False, 1, ""),
    ("set-in-progress-by-hand", by_hand, "in_progress", False, 0, ""),
]


def check_reopened(p: Project, tid: str, before: str, attempts: int, log: str, who: str) -> None:
    data = p.data(tid)
    assert data["status"] == "active" and data.get("attempts", 0) == attempts, data
    assert not {"blocked_reason", "completed"} & set(data), data
    if before == "in_progress":
        assert "assignee" not in data, "the stranded holder is no longer named"
    assert f"· {who} · **reopened**\n  - from {before}: {REASON}{log}" in p.body(tid), p.body(tid)
    (event,) = [e for e in p.queue.events() if e["event"] == "reopened" and e["task"] == tid]
    assert (event["caller"], event["previous_status"], event["attempts"], event["reason"]) == (
        who, before, attempts, REASON)  # fmt: skip


@pytest.mark.parametrize(("name", "setup", "before", "reset", "attempts", "log"), STATES, ids=[s[0] for s in STATES])
def test_reopen_puts_the_task_back_logged_and_it_is_claimed_and_completed(tmp_path, name, setup, before, reset,
                                                                          attempts, log):  # fmt: skip
    p = Project(tmp_path / "project")
    setup(p, "a")
    options = ["--reset-attempts"] if reset else []
    result = json.loads(p.cli("reopen", "a", "--reason", REASON, *options, "--json").stdout)
    assert result == {"id": "a", "status": "active", "previous_status": before, "attempts": attempts,
                      "attempts_left": 3 - attempts}  # fmt: skip
    check_reopened(p, "a", before, attempts, log, getpass.getuser())
    claimed = json.loads(p.cli("claim", "--caller", "w9", "--json").stdout)
    assert claimed["id"] == "a" and claimed["attempts"] == attempts + 1
    p.cli("complete", "a", "--token", claimed["claim_token"], "--summary", "done after the reopen")
    assert p.data("a")["status"] == "done"


def test_a_dead_letter_reopened_without_reset_gets_one_more_attempt(tmp_path):
    p = Project(tmp_path / "project")
    dead_lettered(p, "a")
    assert p.cli("reopen", "a").stdout.strip() == "reopened a: blocked -> active (1 attempt left)"
    p.queue.release("a", token=p.claim("a", "w5"))
    p.cli("claim", "a", "--caller", "w6", code=1)  # over max_attempts again: the dead letter
    assert p.data("a")["status"] == "blocked" and p.data("a")["blocked_reason"] == "max_attempts"


def test_reopen_is_refused_for_a_claimed_an_active_and_an_inbox_task(tmp_path):
    p = Project(tmp_path / "project")
    write_task(p.root, "held", status="active")
    p.claim("held")
    write_task(p.root, "open", status="active")
    write_task(p.root, "new", status="inbox")
    before = {tid: p.body(tid) for tid in ("held", "open", "new")}
    held = p.cli("reopen", "held", code=1).stderr
    assert "task held is claimed by w1 until" in held and "so it is not reopened" in held
    assert "already in the queue: there is nothing to reopen" in p.cli("reopen", "open", code=1).stderr
    assert "task new is inbox, already in the queue" in p.cli("reopen", "new", code=1).stderr
    assert {tid: p.body(tid) for tid in before} == before, "a refused reopen changes nothing"
    assert not [e for e in p.queue.events() if e["event"] == "reopened"]


async def mcp_reopens(p: Project) -> None:
    async with Client(server_params(p)) as client:
        for name, setup, before, reset, attempts, log in STATES:
            if reset:
                continue  # the MCP path gives a dead letter one more attempt; all of them again is a person's call
            setup(p, name)
            answer = structured(await client.call_tool("update_task", {"id": name, "caller": "lead",
                                                                       "status": "active", "note": REASON}))  # fmt: skip
            assert (answer["status"], answer["attempts"], answer["attempts_left"]) == ("active", attempts, 3 - attempts)
            check_reopened(p, name, before, attempts, log, "lead")
            assert "## Notes" not in p.body(name), "the note is the reopen's reason, not a note besides"
            claimed = structured(await client.call_tool("claim_next_task", {"caller": "w9", "task_id": name}))
            assert claimed["attempts"] == attempts + 1
            done = await client.call_tool("complete_task", {"id": name, "claim_token": claimed["claim_token"],
                                                            "summary": "done after the reopen"})  # fmt: skip
            assert structured(done)["status"] == "done"
        blocked(p, "to-inbox")
        answer = structured(await client.call_tool("update_task", {"id": "to-inbox", "status": "inbox"}))
        assert answer["status"] == "inbox" and p.data("to-inbox")["status"] == "inbox"
        assert "**reopened**\n  - from blocked" in p.body("to-inbox")
        write_task(p.root, "held", status="active")
        token = p.claim("held")
        refused = error_text(await client.call_tool("update_task", {"id": "held", "caller": "w9", "status": "active"}))
        assert "task held is claimed by w1, not by w9" in refused and p.data("held")["status"] == "in_progress"
        released = structured(await client.call_tool("update_task", {"id": "held", "claim_token": token,
                                                                     "status": "active"}))  # fmt: skip
        assert released["status"] == "active" and "reopened" not in p.body("held"), "the holder's is a release"


def test_update_task_status_active_reopens_each_state_and_it_is_claimed_and_completed(tmp_path):
    asyncio.run(mcp_reopens(Project(tmp_path / "project")))
