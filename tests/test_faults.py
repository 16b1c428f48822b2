"""Real faults: a full disk (a small tmpfs filled up), a read-only bind mount, a user without write permission, and
SIGKILL at each named fault point. After each, every task file still parses and holds what it held (or a whole,
correct change), no claim is left whose token was never printed (beyond what rule 2 repairs), no event says
completed for a task whose file does not say done, and the tools alone finish every task once the fault is gone.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HYPERVISOR, write_task

from hypervisor.claims.queue import TaskQueue
from hypervisor.core.config import load_config
from hypervisor.tasks.store import TaskStore

LEASE = "1s"  # rule 2's wait for a stranded task (and the lease of claims made without --lease)
HELD = "10m"  # claims held through a fault: they must stay live while it lasts
TOKEN = re.compile(r"\b[0-9a-f]{32}\b")
ENOSPC, EROFS = os.strerror(errno.ENOSPC), os.strerror(errno.EROFS)
WRITE_COMMANDS = ("claim", "renew", "complete", "block", "release", "triage", "run", "reopen")
READ_COMMANDS = ("list", "show", "stats", "validate", "preflight")


class Project:
    """A project folder whose .hypervisor.yaml names the task root `tasks` (a mount point in most tests): the CLI
    runs in it, and every claim token a command printed is remembered."""

    def __init__(self, folder: Path, root: Path) -> None:
        self.folder = folder
        self.root = root
        self.printed: set[str] = set()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".hypervisor.yaml").write_text(f"tasks: {os.path.relpath(root, folder)}\nlease: {LEASE}\n")

    def hv(self, *args: str, env: dict | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """Run the real CLI in the project (under `prefix`, e.g. setpriv); remember the tokens it printed."""
        full_env = {**os.environ, "HYPERVISOR_FAULT": "", **(env or {})}
        full_env.pop("HYPERVISOR_TASKS", None)
        result = subprocess.run([*prefix, *HYPERVISOR, *args], cwd=self.folder, env=full_env, capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        self.printed.update(TOKEN.findall(result.stdout))
        return result

    def claim(self, task_id: str, caller: str, lease: str = HELD) -> str:
        result = self.hv("claim", task_id, "--caller", caller, "--lease", lease, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["claim_token"]

    def tasks(self) -> dict[str, bytes]:
        return {p.stem: p.read_bytes() for p in sorted(self.root.glob("*.md"))}

    def statuses(self) -> dict[str, str]:
        valid, invalid = TaskStore(str(self.root)).summaries()
        assert not invalid, invalid
        return {s["id"]: s["status"] for s in valid}

    def claims(self) -> dict[str, dict]:
        folder = self.root / ".hypervisor" / "claims"
        return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json") if not p.name.startswith(".")}

    def events(self) -> list[dict]:
        path = self.root / ".hypervisor" / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def everything(self) -> dict[str, bytes]:
        """Every file under the task root, state included, by relative path."""
        return {str(p.relative_to(self.root)): p.read_bytes() for p in sorted(self.root.rglob("*")) if p.is_file()}


def seed(project: Project, plain: int = 4, blocked: bool = True) -> None:
    """`plain` active tasks t1.., one with a Close Reason (triage closes it), and one blocked (reopen frees it)."""
    for n in range(1, plain + 1):
        write_task(project.root, f"t{n}", title=f"Task t{n}", status="active", project="web")
    write_task(project.root, "c1", body="Old.\n\n## Close Reason\nDuplicate of t1.\n", title="Dup", status="active")
    if blocked:
        write_task(project.root, "b1", title="Waits", status="blocked", blocked_reason="needs a key", attempts=1)


def consistent(project: Project, unchanged: dict[str, bytes] | None = None) -> None:
    """Every task file parses (and, if given, holds the bytes it held); every live claim's token was printed and its
    file shows it (or is one rule 2 repairs: written back on the next touch); no outcome event lacks its outcome."""
    statuses = project.statuses()
    if unchanged is not None:
        now_held = project.tasks()
        changed = sorted(task_id for task_id in unchanged if now_held.get(task_id) != unchanged[task_id])
        assert not changed, f"task files changed by a command that failed: {changed}"
    for task_id, record in project.claims().items():
        if record["lease_expires_at"] > time.time():
            assert record["token"] in project.printed, f"a live claim on {task_id} whose token was never printed"
    last: dict[str, str] = {}
    for event in project.events():
        if event["event"] not in ("renewed", "restored"):
            last[event["task"]] = event["event"]
    for task_id, kind in last.items():  # the event that set a task's state last must agree with its file
        if kind == "completed":
            assert statuses[task_id] == "done", f"a completed event for {task_id}, whose file says {statuses[task_id]}"
        if kind in ("blocked", "dead_letter"):
            assert statuses[task_id] == "blocked", f"a {kind} event for {task_id}, whose file says {statuses[task_id]}"


def one_line(result: subprocess.CompletedProcess, cause: str, root: Path) -> str:
    """The command failed with exit 1 and one line on stderr naming a file under `root` and `cause`."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert cause in lines[0] and str(root) in lines[0], lines[0]
    return lines[0]


FINISHER = f"{sys.executable} -m hypervisor complete {{task_id}} --token {{token}} --summary finished-after-the-fault"


def finish_everything(project: Project, timeout: float = 60) -> None:
    """With the tools alone: reopen what is blocked, wait until rule 2 lets every open task be claimed (a stranded
    one a lease after its file last changed: a polled condition, no fixed wait), then `hypervisor run` a worker that
    completes its task; until every task is done."""
    deadline = time.monotonic() + timeout
    queue = TaskQueue(TaskStore(str(project.root)), load_config(str(project.folder / ".hypervisor.yaml")))
    while True:
        open_tasks = {t: s for t, s in project.statuses().items() if s != "done"}
        if not open_tasks:
            break
        for task_id, status in open_tasks.items():
            if status in ("blocked", "cancelled", "review"):
                project.hv("reopen", task_id, "--reason", "the fault is gone").check_returncode()
        while not set(open_tasks) <= {s["id"] for s in queue.ready()}:
            assert time.monotonic() < deadline, f"never claimable again: {project.statuses()}, {project.claims()}"
            time.sleep(0.02)  # between polls of the condition (rule 2's lease running out), not a fixed wait
        ran = project.hv("run", "--agent", FINISHER, "--workers", "4")
        assert "Traceback" not in ran.stderr and ran.returncode == 0, ran.stderr
        assert time.monotonic() < deadline, f"still not done: {project.statuses()}"
    consistent(project)
    assert not [t for t, r in project.claims().items() if r["lease_expires_at"] > time.time()], project.claims()


# -- mounts -----------------------------------------------------------------------------------------------------------
def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({' '.join(args)}: {done.stderr.strip()}); these tests need root")


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A project whose task root is a 2 MiB tmpfs (unmounted at the end)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    project = Project(tmp_path / "project", tmp_path / "project" / "tasks")
    project.root.mkdir()
    mount("-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(project.root))
    try:
        yield project
    finally:
        unmount(project.root)


def fill(root: Path, leave_pages: int = 0) -> Path:
    """Fill the file system of `root` with `.filler` until ENOSPC, then free `leave_pages` pages of it."""
    filler = root / ".filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 16, 1 << 12, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
        end = os.fstat(fd).st_size
    finally:
        os.close(fd)
    page = os.sysconf("SC_PAGE_SIZE")
    if leave_pages:
        os.truncate(filler, max(0, (end // page - leave_pages) * page))
    else:
        with pytest.raises(OSError):
            (root / ".probe").write_bytes(b"x")
    (root / ".probe").unlink(missing_ok=True)
    return filler


# -- a. a full disk ---------------------------------------------------------------------------------------------------
def test_a_full_disk_fails_each_write_in_one_line_and_the_tools_finish_every_task_after(small_disk):
    project = small_disk
    seed(project)
    t1 = project.claim("t1", "w1")
    t2 = project.claim("t2", "w2")
    t3 = project.claim("t3", "w3")
    assert project.hv("list").returncode == 0  # the index is saved
    # A person edits a task while the disk is full (the editor's write fits: same size): the index is stale now.
    before_events = project.events()
    filler = fill(project.root)
    edited = project.root / "t4.md"
    edited.write_bytes(edited.read_bytes().replace(b"Task t4", b"Task T4"))
    before = project.tasks()

    results = {
        "claim": project.hv("claim", "t4", "--caller", "w4"),
        "claim next": project.hv("claim", "--caller", "w4"),
        "renew": project.hv("renew", "t1", "--token", t1),
        "complete": project.hv("complete", "t1", "--token", t1, "--summary", "did it"),
        "block": project.hv("block", "t2", "--token", t2, "--reason", "needs a key"),
        "release": project.hv("release", "t3", "--token", t3),
        "triage": project.hv("triage"),
        "run": project.hv("run", "--agent", "triage", "--workers", "2"),
        "reopen": project.hv("reopen", "b1"),
    }
    for name, result in results.items():
        print(name, "->", one_line(result, ENOSPC, project.root))
    consistent(project, unchanged=before)
    assert set(project.claims()) == {"t1", "t2", "t3"}, "a failed claim left its record"
    assert project.events()[: len(before_events)] == before_events
    assert not [e for e in project.events()[len(before_events) :] if e["event"] != "renewed"]
    for command in (("list",), ("show", "t1"), ("stats",), ("validate",), ("preflight",), ("list", "--json")):
        result = project.hv(*command)
        assert result.returncode == 0 and "hypervisor:" not in result.stderr, (command, result.stderr)

    filler.unlink()
    project.hv("complete", "t1", "--token", t1, "--summary", "did it").check_returncode()
    project.hv("block", "t2", "--token", t2, "--reason", "needs a key").check_returncode()
    project.hv("release", "t3", "--token", t3).check_returncode()
    assert project.hv("run", "--agent", "triage", "--workers", "2").returncode == 0
    assert project.statuses()["c1"] == "done"
    finish_everything(project)


def reset(project: Project) -> None:
    """An empty task root again (the mount stays)."""
    for path in project.root.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    project.printed.clear()


@pytest.mark.parametrize(
    "command", [("triage",), ("run", "--agent", "triage", "--workers", "2")], ids=["triage", "run"]
)
def test_a_nearly_full_disk_never_strands_a_claim(small_disk, command):
    """With 0 to a few pages free, the batch commands fail part-way at every step in turn (a claim record, a task
    file, a worker's log, run.json, summary.json): the run ends with its summary (or one line) and exit 1, no claim
    is left that nobody holds, and the tools finish every task once space returns."""
    project = small_disk
    for pages in (1, 2) if command[0] == "triage" else (2, 3, 5, 8):  # what each step needs: see the printout
        reset(project)
        seed(project, plain=3, blocked=False)
        assert project.hv("list").returncode == 0
        filler = fill(project.root, pages)
        result = project.hv(*command)
        logs = "".join(p.read_text() for p in project.root.glob(".hypervisor/runs/*/logs/*.log"))
        assert "Traceback" not in result.stdout + result.stderr + logs, (pages, result.stderr, logs)
        assert result.returncode in (0, 1), (pages, result.returncode, result.stderr)
        if result.returncode == 1:
            last = result.stderr.strip().splitlines()[-1]
            assert last.startswith("hypervisor: cannot write ") and ENOSPC in last, (pages, last)
        consistent(project)
        print(f"{pages} page(s) free: exit {result.returncode}, {project.statuses()}")
        filler.unlink()
        finish_everything(project)
