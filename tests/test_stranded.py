"""The ways a task file and its claim part, each made for real, and each ending claimable again by rule 2 and
completing normally (issue 14, point 2): the claim store says who holds a task, the file is made to agree.

- a Redis restart while a task is claimed: the file says in_progress, no claim holds it (stranded);
- a SIGKILL between the claim record and the file: a live claim the file does not show;
- an editor saving an old buffer: status active under a live claim, done under a live claim, or in_progress after
  the claim was released.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from conftest import REPO, make_queue, off_hook_path, run_cli, running_redis, write_task

from hypervisor.core.config import load_config
from hypervisor.core.timeutil import now, parse_iso
from hypervisor.tasks import taskfile

LEASE = 4  # seconds, `lease:` in .hypervisor.yaml: a stranded task is claimable again this long after its last change
HOOK = [sys.executable, "-S", str(REPO / "hooks" / "tool_hook.py")]
FROM = re.compile(r"from (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")


class Project:
    """A project folder (its .hypervisor.yaml: the short lease, the backend) worked through the real CLI."""

    def __init__(self, path: Path, backend: str = "file", lease: int = LEASE) -> None:
        self.path = path
        self.root = path / "tasks"
        self.root.mkdir(parents=True)
        self.config = path / ".hypervisor.yaml"
        self.config.write_text(f"tasks: tasks\nlease: {lease}s\n" + (f"backend: '{backend}'\n" if backend else ""))
        self.backend = backend

    def queue(self):
        """A fresh queue (after a Redis restart, an old connection would be stale)."""
        return make_queue(self.root, self.backend, load_config(str(self.config)))

    def task(self, task_id: str, **fields) -> Path:
        return write_task(self.root, task_id, title=task_id, status="active", **fields)

    def cli(self, *args: str, code: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
        return run_cli(*args, cwd=self.path, env=env, check=code)

    def claim(self, task_id: str, caller: str, *options: str) -> dict:
        return json.loads(self.cli("claim", task_id, "--caller", caller, "--json", *options).stdout)

    def refused(self, *args: str, code: int = 1) -> str:
        result = self.cli(*args, code=code)
        assert result.stderr.startswith("hypervisor: "), result.stderr
        return result.stderr[len("hypervisor: ") :]

    def file(self, task_id: str) -> Path:
        return self.root / f"{task_id}.md"

    def fields(self, task_id: str) -> dict:
        return taskfile.read_doc(str(self.file(task_id))).data

    def events(self, kind: str | None = None) -> list[dict]:
        return [e for e in self.queue().events() if kind in (None, e["event"])]

    def complete(self, task_id: str, token: str) -> None:
        self.cli("complete", task_id, "--token", token, "--summary", "finished after the repair")
        assert self.fields(task_id)["status"] == "done"


def claimable_from(text: str) -> float:
    """The moment a refusal says the task can be claimed again."""
    found = FROM.search(text)
    assert found, f"no 'from <time>' in: {text}"
    return parse_iso(found[1])


def wait_for(moment: float) -> None:
    """Poll the clock until the moment a refusal named has come."""
    while now() < moment:
        time.sleep(0.01)


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    """Poll `condition`; `timeout` is a hang guard, never a claim about speed."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def taken_over_when_claimable(p: Project, task_id: str, text: str, caller: str = "w2") -> dict:
    """Wait for the moment the refusal named, then claim: a takeover of the stranded task (attempt counted, event,
    the reason in the worker log)."""
    wait_for(claimable_from(text))
    attempts = p.fields(task_id)["attempts"]
    claimed = p.claim(task_id, caller)
    assert claimed["attempts"] == attempts + 1 and claimed["reclaimed_from"] == "w1", claimed
    (event,) = [e for e in p.events("taken_over") if e["task"] == task_id]
    assert event["reason"] == "stranded" and event["previous_caller"] == "w1" and event["caller"] == caller
    body = p.file(task_id).read_text()
    assert "**taken over**" in body and "in_progress with no live claim (stranded; last assigned to w1)" in body
    return claimed


# -- (a) a Redis restart --------------------------------------------------------------------------------------
def test_a_redis_restart_strands_the_task_which_is_claimable_a_lease_after_its_last_change(tmp_path):
    folder = tmp_path / "redis"
    folder.mkdir()
    with running_redis(folder) as port:
        spec = f"redis://127.0.0.1:{port}/0?namespace=s{uuid.uuid4().hex[:8]}"
        p = Project(tmp_path / "project", spec, lease=LEASE + 2)  # room for a restart on a busy machine
        p.task("a")
        first = p.claim("a", "w1")
        assert p.queue().read_claim("a") is not None
    with running_redis(folder, port=port):  # the same server again, persisting nothing: every claim is gone
        assert p.queue().read_claim("a") is None and p.fields("a")["status"] == "in_progress"
        text = p.refused("claim", "a", "--caller", "w2")
        assert "no claim holds it (stranded; last assigned to w1)" in text
        assert claimable_from(text) > now(), "claimable only a whole lease after the file last changed"
        lost = p.refused("renew", "a", "--token", first["claim_token"])
        assert lost.startswith("claim lost: task a has no live claim") and claimable_from(lost) == claimable_from(text)
        p.cli("list")  # a touch: there is no live claim to write back, so the file is left as it is
        assert p.fields("a")["assignee"] == "w1" and p.events() == []
        second = taken_over_when_claimable(p, "a", text)
        p.complete("a", second["claim_token"])
        assert [e["event"] for e in p.events()] == ["taken_over", "completed"]


# -- (b) a SIGKILL between the claim record and the file ---------------------------------------------------------
def test_a_kill_between_the_claim_record_and_the_file_is_written_back_then_taken_over(tmp_path, backend):
    p = Project(tmp_path / "project", backend)
    p.task("a")
    fault = {"HYPERVISOR_FAULT": "claim-recorded"}  # the lease: long enough for the look below, on a busy machine
    killed = p.cli("claim", "a", "--caller", "w1", "--lease", "8s", code=-signal.SIGKILL, env=fault)
    assert "token" not in killed.stdout, "the token was never handed out"
    claim = p.queue().read_claim("a")
    assert claim is not None and not claim.expired(now()) and p.fields("a")["status"] == "active"
    listed = json.loads(p.cli("list", "--json").stdout)  # a touch: the file is made to agree with the live claim
    assert [(t["id"], t["status"], t["assignee"]) for t in listed] == [("a", "in_progress", "w1")]
    (restored,) = p.events("restored")
    assert restored["caller"] == "w1" and restored["file_status"] == "active"
    assert p.fields("a")["attempts"] == 1
    text = p.refused("claim", "a", "--caller", "w2")
    assert "already claimed by w1" in text, "nobody holds the token, but the lease still runs"
    queue = p.queue()
    wait_until(lambda: queue.read_claim("a").expired(now()), "the lease to run out")  # the server's clock, on Redis
    second = p.claim("a", "w2")
    assert second["attempts"] == 2 and second["reclaimed_from"] == "w1"
    assert p.events("taken_over")[0]["previous_caller"] == "w1"
    p.complete("a", second["claim_token"])
    assert [e["event"] for e in p.events()] == ["restored", "taken_over", "completed"]


# -- (c) an editor saving an old buffer ----------------------------------------------------------------------------
def hook_renewal(p: Project, task_id: str, token: str, importtime: bool = False) -> set[str]:
    """The real post-tool hook, as hooks.json starts it, for a write by a supervised worker; the modules it loaded."""
    payload = {"session_id": "s1", "transcript_path": "/dev/null", "cwd": str(p.path), "hook_event_name": "PostToolUse",
               "tool_name": "Write", "tool_input": {"file_path": str(p.path / "out.txt"), "content": "x\n"},
               "tool_use_id": "toolu_1", "tool_response": {}}  # fmt: skip
    env = {"PATH": os.environ["PATH"], "CLAUDE_PROJECT_DIR": str(p.path), "HYPERVISOR_WORKER": "1",
           "HYPERVISOR_TASK_ID": task_id, "HYPERVISOR_CLAIM_TOKEN": token}  # fmt: skip
    command = [*HOOK[:2], "-X", "importtime", *HOOK[2:]] if importtime else HOOK
    result = subprocess.run(command, input=json.dumps(payload), capture_output=True, text=True, env=env,
                            cwd=p.path, timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stdout == "", result
    lines = result.stderr.splitlines()
    assert all(line.startswith("import time:") for line in lines), result.stderr
    return {line.rsplit("|", 1)[1].strip() for line in lines}


def test_an_old_buffer_saved_under_a_live_claim_is_written_back_by_each_touch(tmp_path):
    p = Project(tmp_path / "project")
    p.task("a")
    old = p.file("a").read_text()  # an editor's buffer from before the claim: status active
    claimed = p.claim("a", "w1", "--lease", "10m")
    token = claimed["claim_token"]
    light = hook_renewal(p, "a", token, importtime=True)  # the normal case: the file shows the claim
    assert "hypervisor.hooks.edge" in light and not off_hook_path(light), off_hook_path(light)
    touches = {
        "renew": lambda: p.cli("renew", "a", "--token", token),
        "list": lambda: p.cli("list"),
        "hook": lambda: hook_renewal(p, "a", token),
    }
    for touch, run in touches.items():
        p.file("a").write_text(old)
        assert p.fields("a")["status"] == "active"
        run()
        data = p.fields("a")
        assert (data["status"], data["assignee"], data["attempts"]) == ("in_progress", "w1", 1), touch
        assert len(p.events("restored")) == list(touches).index(touch) + 1, touch
    assert p.refused("claim", "a", "--caller", "w2").startswith("task a is already claimed by w1")
    p.complete("a", token)
    assert [e["event"] for e in p.events() if e["event"] != "renewed"] == ["claimed", *["restored"] * 3, "completed"]


def test_an_editor_marking_a_claimed_task_done_ends_the_claim_and_the_holder_is_told(tmp_path):
    p = Project(tmp_path / "project")
    p.task("a")
    token = p.claim("a", "w1", "--lease", "10m")["claim_token"]
    p.file("a").write_text(p.file("a").read_text().replace("status: in_progress", "status: done"))
    text = p.refused("renew", "a", "--token", token)
    assert text.startswith("claim ended: task a was marked done in its file; stop work on it") and "reopen a" in text
    (ended,) = p.events("claim_ended")
    assert ended["caller"] == "w1" and ended["reason"] == "its file says done"
    assert p.queue().read_claim("a") is None
    assert "no claim holds it" in p.refused("renew", "a", "--token", token)
    p.cli("reopen", "a", "--reason", "the editor saved too early")  # the advice: reopen it, then claim it
    again = p.claim("a", "w2")
    assert again["attempts"] == 2
    p.complete("a", again["claim_token"])


def test_an_in_progress_buffer_saved_after_the_release_strands_the_task_until_a_lease_has_passed(tmp_path):
    p = Project(tmp_path / "project")
    p.task("a")
    token = p.claim("a", "w1", "--lease", "10m")["claim_token"]
    stale = p.file("a").read_text()  # the editor's buffer while it was claimed: in_progress, assignee w1
    p.cli("release", "a", "--token", token)
    assert p.fields("a")["status"] == "active"
    p.file("a").write_text(stale)
    text = p.refused("claim", "a", "--caller", "w2")
    assert "no claim holds it (stranded; last assigned to w1)" in text and p.queue().ready() == []
    p.cli("list")  # no live claim: nothing to write back, the file keeps saying in_progress
    assert p.fields("a")["status"] == "in_progress"
    second = taken_over_when_claimable(p, "a", text)
    p.complete("a", second["claim_token"])
    assert [e["event"] for e in p.events()] == ["claimed", "released", "taken_over", "completed"]
