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
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import HYPERVISOR, write_task

from hypervisor.claims.queue import TaskQueue
from hypervisor.core.config import load_config
from hypervisor.core.errors import storage_error
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


def consistent(project: Project, unchanged: dict[str, bytes] | None = None, holders_may_die: bool = False) -> None:
    """Every task file parses (and, if given, holds the bytes it held); every live claim's token was printed (unless
    `holders_may_die`: a holder killed before it printed its token leaves a claim its lease frees); the event that
    set each task's state last agrees with its file (no completed event for a task that is not done)."""
    statuses = project.statuses()
    if unchanged is not None:
        now_held = project.tasks()
        changed = sorted(task_id for task_id in unchanged if now_held.get(task_id) != unchanged[task_id])
        assert not changed, f"task files changed by a command that failed: {changed}"
    for task_id, record in project.claims().items():
        if record["lease_expires_at"] > time.time() and not holders_may_die:
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


def reads_anyway(result: subprocess.CompletedProcess, command: tuple[str, ...]) -> None:
    """A read command worked on a disk that takes no writes: exit 0, and at most warnings (what it could not write
    back) on stderr."""
    assert result.returncode == 0 and "Traceback" not in result.stderr, (command, result.stderr)
    problems = [line for line in result.stderr.splitlines() if line.startswith("hypervisor:")]
    assert all(line.startswith("hypervisor: warning: ") for line in problems), (command, result.stderr)
    print(command, "->", result.stderr.strip() or "(nothing on stderr)")


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
def people_save(folder: Path, old_buffer: str) -> None:
    """A person's editor saves two files (no bigger than before): t4 edited, so the index is stale, and
    `old_buffer` saved from a buffer loaded before its claim, so its file no longer shows the live claim."""
    edited = folder / "t4.md"
    edited.write_bytes(edited.read_bytes().replace(b"Task t4", b"Task T4"))
    stale = folder / f"{old_buffer}.md"
    stale.write_bytes(stale.read_bytes().replace(b"status: in_progress", b"status: active"))


def every_write(project: Project, t1: str, t2: str, t3: str) -> dict[str, subprocess.CompletedProcess]:
    """Each write command run once, by name: t1-t3 are claimed with these tokens, t4 is free, b1 is blocked."""
    return {
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


def test_a_full_disk_fails_each_write_in_one_line_and_the_tools_finish_every_task_after(small_disk):
    """Every write command exits 1 with one line (a claim record, a task file, run.json: each needs a new block);
    list, show, stats, validate and preflight exit 0: they need no write (the index is a cache, and a listing's
    write-back of a file that does not show its live claim is only warned about when it cannot be made)."""
    project = small_disk
    seed(project, plain=5)
    t1 = project.claim("t1", "w1")
    t2 = project.claim("t2", "w2")
    t3 = project.claim("t3", "w3")
    t5 = project.claim("t5", "w5")
    assert project.hv("list").returncode == 0  # the index is saved
    before_events = project.events()
    filler = fill(project.root)
    # A person's editor writes while the disk is full (no bigger than before, so it fits): t4 edited (the index is
    # stale now), t5 saved from an old buffer (its file no longer shows its live claim: a listing writes it back).
    people_save(project.root, old_buffer="t5")
    before = project.tasks()

    for name, result in every_write(project, t1, t2, t3).items():
        print(name, "->", one_line(result, ENOSPC, project.root))
    consistent(project, unchanged=before)
    assert set(project.claims()) == {"t1", "t2", "t3", "t5"}, "a failed claim left its record"
    assert project.events() == before_events, "an event was logged for a change that was not made"
    for command in (("list",), ("show", "t1"), ("stats",), ("validate",), ("preflight",), ("list", "--json")):
        reads_anyway(project.hv(*command), command)
    assert project.tasks() == before

    filler.unlink()
    assert project.hv("list").returncode == 0  # rule 2: t5's file shows its live claim again
    assert project.statuses()["t5"] == "in_progress"
    assert [e["event"] for e in project.events()[len(before_events) :]] == ["restored"]
    project.hv("complete", "t5", "--token", t5, "--summary", "did it").check_returncode()
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


# -- b. a read-only disk ----------------------------------------------------------------------------------------------
@pytest.fixture
def read_only(tmp_path):
    """A project whose task root is a bind mount of `data/`: writable while the test sets it up, then read-only
    (`project.lock()`); unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    project = Project(tmp_path / "project", tmp_path / "project" / "tasks")
    data = tmp_path / "project" / "data"
    data.mkdir()
    project.root.mkdir()
    mount("--bind", str(data), str(project.root))
    project.data = data
    project.lock = lambda: mount("-o", "remount,bind,ro", str(project.root))
    project.unlock = lambda: mount("-o", "remount,bind,rw", str(project.root))
    try:
        yield project
    finally:
        unmount(project.root)


def test_b_read_only_disk_fails_each_write_in_one_line_and_reads_still_work(read_only):
    project = read_only
    seed(project)
    t1 = project.claim("t1", "w1")
    t2 = project.claim("t2", "w2")
    t3 = project.claim("t3", "w3")
    assert project.hv("list").returncode == 0
    project.lock()
    with pytest.raises(OSError) as probe:
        (project.root / "probe").write_text("x")
    assert probe.value.errno == errno.EROFS
    # Through the writable side, as a person's editor would: t4 edited (the index is stale now) and t3 saved from
    # an old buffer (its file no longer shows its live claim: a listing would write it back).
    people_save(project.data, old_buffer="t3")
    before = project.everything()

    for name, result in every_write(project, t1, t2, t3).items():
        print(name, "->", one_line(result, EROFS, project.root))
    for command in (("list",), ("list", "--json", "--ready"), ("show", "t3"), ("stats",), ("validate",),
                    ("preflight",)):  # fmt: skip
        reads_anyway(project.hv(*command), command)
    assert project.everything() == before, "a command changed a file on a read-only disk"

    project.unlock()
    assert project.hv("list").returncode == 0  # rule 2: t3's file shows its live claim again
    assert project.statuses()["t3"] == "in_progress"
    project.hv("complete", "t1", "--token", t1, "--summary", "did it").check_returncode()
    project.hv("block", "t2", "--token", t2, "--reason", "needs a key").check_returncode()
    project.hv("release", "t3", "--token", t3).check_returncode()
    finish_everything(project)


# -- no permission: EACCES (root without CAP_DAC_OVERRIDE), EPERM (an immutable file), EIO ----------------------------
NO_OVERRIDE = ("setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search",
               "--")  # fmt: skip


def test_no_write_permission_fails_each_write_in_one_line(tmp_path):
    """Root ignores permission bits; without CAP_DAC_OVERRIDE (setpriv) it obeys them, so a task root made
    read-only by chmod gives a real EACCES."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    project = Project(tmp_path / "project", tmp_path / "project" / "tasks")
    project.root.mkdir()
    seed(project)
    t1 = project.claim("t1", "w1")
    assert project.hv("list").returncode == 0
    if project.hv("list", prefix=NO_OVERRIDE).returncode != 0:
        pytest.skip("setpriv cannot drop CAP_DAC_OVERRIDE here")
    paths = [project.root, *project.root.rglob("*")]
    modes = {path: path.stat().st_mode for path in paths}
    try:
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
        before = project.everything()
        for command in (("claim", "t2", "--caller", "w2"), ("renew", "t1", "--token", t1),
                        ("complete", "t1", "--token", t1, "--summary", "x"), ("block", "t1", "--token", t1, "--reason", "r"),
                        ("release", "t1", "--token", t1), ("triage",), ("run", "--agent", "triage"), ("reopen", "b1")):  # fmt: skip
            print(command[0], "->", one_line(project.hv(*command, prefix=NO_OVERRIDE), os.strerror(errno.EACCES),
                                             project.root))  # fmt: skip
        for command in (("list",), ("show", "t1"), ("stats",), ("validate",), ("preflight",)):
            reads_anyway(project.hv(*command, prefix=NO_OVERRIDE), command)
        assert project.everything() == before
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    project.hv("complete", "t1", "--token", t1, "--summary", "did it").check_returncode()
    finish_everything(project)


def test_an_immutable_task_file_refuses_its_claim_and_only_its_own(tmp_path):
    """`chattr +i` (EPERM, even for root): the claim record is dropped again when the task file cannot be written;
    triage and run leave that one task out, do the others, and exit 1 with one line naming it."""
    project = Project(tmp_path / "project", tmp_path / "project" / "tasks")
    project.root.mkdir()
    seed(project, plain=2, blocked=False)
    frozen = project.root / "t1.md"
    if subprocess.run(["chattr", "+i", str(frozen)], capture_output=True).returncode != 0:
        pytest.skip(f"chattr +i is not supported on {project.root} (or chattr is missing)")
    try:
        before = frozen.read_bytes()
        cause = os.strerror(errno.EPERM)
        print("claim ->", one_line(project.hv("claim", "t1", "--caller", "w1"), cause, project.root))
        assert "t1" not in project.claims(), "the claim record outlived the failed task-file write"
        triaged = project.hv("triage")
        assert triaged.returncode == 1 and "Traceback" not in triaged.stderr, triaged.stderr
        assert "t2: triaged" in triaged.stdout and "c1: closed" in triaged.stdout, triaged.stdout
        print("triage ->", one_line(triaged, cause, project.root))
        ran = project.hv("run", "--agent", FINISHER, "--workers", "2")
        assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stderr
        assert ran.stderr.strip().splitlines()[-1].startswith(f"hypervisor: cannot use {frozen}: {cause}")
        assert project.statuses() == {"t1": "active", "t2": "done", "c1": "done"}
        assert frozen.read_bytes() == before and not project.claims()
        consistent(project)
    finally:
        subprocess.run(["chattr", "-i", str(frozen)], check=True)
    finish_everything(project)


def test_an_io_error_is_one_line_naming_the_file():
    line = str(storage_error(OSError(errno.EIO, os.strerror(errno.EIO), "/srv/tasks/t1.md")))
    assert "\n" not in line
    assert line.startswith("cannot use /srv/tasks/t1.md: Input/output error (EIO); ") and "dmesg" in line


def test_an_io_error_through_the_cli_is_one_line_and_exit_1(root, monkeypatch):
    """The CLI's edge (HypervisorGroup) turns an EIO from a task-file write into one line and exit 1."""
    from click.testing import CliRunner

    from hypervisor.core import fsutil
    from hypervisor.frontends.cli import cli

    write_task(root, "t1", status="active")

    def failing(path, *args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO), path)

    monkeypatch.setattr(fsutil, "replace_if_unchanged", failing)
    result = CliRunner().invoke(cli, ["claim", "t1", "--caller", "w1", "--tasks", str(root)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hypervisor: cannot use {root / 't1.md'}: Input/output error")
    assert not list((root / ".hypervisor" / "claims").glob("*.json")), "the claim outlived the failed write"


# -- c. SIGKILL at each named fault point -----------------------------------------------------------------------------
HOLD = 4.0  # seconds: the lease of the claim a killed holder had; it outlasts the holder's start-up, then runs out
KILLS = {  # command -> the fault points it passes (fault_point() in claims/queue.py, tasks/store.py, core/fsutil.py)
    "claim": ("claim-recorded", "task-before-write", "write-before-replace", "write-partial"),
    "complete": ("task-before-write", "write-before-replace", "write-partial", "outcome-written"),
    "block": ("task-before-write", "write-before-replace", "write-partial", "outcome-written"),
    "release": ("task-before-write", "write-before-replace", "write-partial"),
    "reopen": ("task-before-write", "write-before-replace", "write-partial"),
}
# What each kill leaves (the task file; its claim record), every one a state rule 2 repairs:
# - claim killed after its record, before the file: a live claim whose token was never printed and whose file
#   does not show it (the next touch writes it back; its lease frees the task);
# - claim killed inside the record's write: nothing (the temporary file is not a record);
# - complete/block/release killed before the file is replaced: nothing changed, the holder's claim live (its
#   lease frees the task); killed after the outcome is written: the outcome, and a live claim the next touch ends;
# - reopen killed before the file is replaced: still blocked, no claim (reopen again).
AFTER = {
    ("claim", "claim-recorded"): ("unchanged", "live"),
    ("claim", "task-before-write"): ("unchanged", "live"),
    ("complete", "outcome-written"): ("done", "live"),
    ("block", "outcome-written"): ("blocked", "live"),
}


def kill_case(tmp_path: Path, command: str, fault: str) -> tuple[Project, list[str], bytes]:
    """A project with task x ready for `command` (claimed by a holder for HOLD seconds, or blocked for reopen); the
    command line to kill at `fault`, and the file's bytes before it."""
    project = Project(tmp_path / f"{command}-{fault}", tmp_path / f"{command}-{fault}" / "tasks")
    project.root.mkdir()
    write_task(project.root, "x", title="Victim", status="active", body="Body that must survive.\n" * 50)
    queue = TaskQueue(TaskStore(str(project.root)), load_config(str(project.folder / ".hypervisor.yaml")))
    queue.store.ensure_state()
    args = {"claim": ["claim", "x", "--caller", "doomed"], "reopen": ["reopen", "x", "--reason", "retry"]}
    if command == "reopen":
        token = queue.claim_next("holder", task_id="x")["claim_token"]
        queue.block("x", token=token, reason="needs a key")
    elif command != "claim":
        token = queue.claim_next("holder", task_id="x", lease_seconds=HOLD)["claim_token"]
        project.printed.add(token)
        extra = {"complete": ["--summary", "did it"], "block": ["--reason", "needs a key"]}
        args[command] = [command, "x", "--token", token, *extra.get(command, [])]
    return project, args[command], (project.root / "x.md").read_bytes()


def test_c_sigkill_at_each_fault_point_leaves_what_rule_2_repairs(tmp_path, cpu_hog):
    """Each command killed (SIGKILL) at each fault point it passes, eighteen cases run side by side: right after the
    kill the state is the one AFTER names (else nothing changed), no event claims what did not happen, and the
    tools alone finish the task: a touch, a reopen where it is blocked, a claim once rule 2 allows it, a complete.
    Beside a CPU hog: a killed holder's lease (HOLD) must outlast its start-up on a busy machine too."""
    cases = [(command, fault) for command, faults in KILLS.items() for fault in faults]
    problems: list[str] = []
    killed: dict[tuple[str, str], tuple[Project, bytes, float]] = {}

    def kill(case: tuple[str, str]) -> None:
        project, args, before = kill_case(tmp_path, *case)
        started = time.monotonic()
        result = project.hv(*args, env={"HYPERVISOR_FAULT": case[1]})
        if result.returncode != -signal.SIGKILL:
            problems.append(f"{case}: not killed at its fault point: exit {result.returncode}: {result.stderr}")
        killed[case] = (project, before, time.monotonic() - started)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(kill, cases))
    for case, (project, before, _) in killed.items():
        raw = (project.root / "x.md").read_bytes()
        record = project.claims().get("x")
        seen = ("unchanged" if raw == before else project.statuses()["x"],
                "none" if record is None else ("live" if record["lease_expires_at"] > time.time() else "expired"))  # fmt: skip
        expected = AFTER.get(case, ("unchanged", "live" if case[0] in ("complete", "block", "release") else "none"))
        if seen != expected and not (expected[1] == "live" and seen == (expected[0], "expired")):
            problems.append(f"{case}: left {seen}, expected {expected}")
        kinds = [e["event"] for e in project.events()]
        print(f"{case[0]} killed at {case[1]}: file {seen[0]}, claim {seen[1]}, events {kinds}")
        setup = {"claim": [], "reopen": ["claimed", "blocked"]}.get(case[0], ["claimed"])
        if kinds != setup:  # the killed command logged nothing: its event comes after its change, and it died first
            problems.append(f"{case}: events {kinds} after the setup's {setup} say more happened than did")
        try:
            consistent(project, holders_may_die=True)
        except AssertionError as error:
            problems.append(f"{case}: {error}")
    print("slowest kill:", max(spent for _, _, spent in killed.values()), "s")
    assert not problems, "\n".join(problems)

    def recover(case: tuple[str, str]) -> None:
        project = killed[case][0]
        try:
            finish_with_claims(project, "x")
        except AssertionError as error:
            problems.append(f"{case}: {error}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(recover, cases))
    assert not problems, "\n".join(problems)


def finish_with_claims(project: Project, task_id: str, timeout: float = 60) -> None:
    """The tools alone, one task: a listing (rule 2's touch), reopen if it is blocked, wait until it can be claimed
    (a polled condition), then claim and complete it."""
    assert project.hv("list").returncode == 0
    if project.statuses()[task_id] == "blocked":
        project.hv("reopen", task_id, "--reason", "the holder died").check_returncode()
    if project.statuses()[task_id] != "done":
        queue = TaskQueue(TaskStore(str(project.root)), load_config(str(project.folder / ".hypervisor.yaml")))
        deadline = time.monotonic() + timeout
        while task_id not in {s["id"] for s in queue.ready()}:
            assert time.monotonic() < deadline, f"never claimable again: {project.statuses()}, {project.claims()}"
            time.sleep(0.02)  # between polls of the condition (the dead holder's lease running out)
        claimed = project.hv("claim", task_id, "--caller", "rescuer", "--json")
        assert claimed.returncode == 0, claimed.stderr
        token = json.loads(claimed.stdout)["claim_token"]
        project.hv("complete", task_id, "--token", token, "--summary", "finished by the rescuer").check_returncode()
    assert project.statuses()[task_id] == "done"
    assert not [t for t, r in project.claims().items() if r["lease_expires_at"] > time.time()], project.claims()
    consistent(project)


def test_a_nearly_full_disk_stops_the_batch_worker_in_one_line(small_disk):
    """scripts/batch_worker.py with the batch folder and the task root on a nearly full disk: it stops at the first
    file it cannot write (a claim record, a task file, owner.json, a result) with one line and exit 1, gives back
    the claim in hand, and once space returns the next runs finish every line of the queue."""
    project = small_disk
    script = Path(__file__).resolve().parents[1] / "scripts" / "batch_worker.py"
    for pages in (1, 3, 4, 6):
        reset(project)
        seed(project, plain=3, blocked=False)
        batch = project.root / "batch"
        batch.mkdir()
        (batch / "queue.txt").write_text("".join(f"{project.root / t}.md\n" for t in ("c1", "t1", "t2", "t3")))
        assert project.hv("list").returncode == 0
        filler = fill(project.root, pages)
        env = {**os.environ, "HYPERVISOR_FAULT": ""}
        stopped = subprocess.run([sys.executable, str(script), "--batch", "10"], cwd=batch, env=env,
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
        assert "Traceback" not in stopped.stderr and stopped.returncode == 1, (pages, stopped.stderr)
        lines = stopped.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("batch_worker.py: error: cannot write ") and ENOSPC in lines[0]
        consistent(project)
        assert not project.claims(), f"{pages} page(s) free: the batch worker left claims {project.claims()}"
        print(f"{pages} page(s) free: {lines[0]}; {project.statuses()}")
        filler.unlink()
        deadline = time.monotonic() + 60
        while True:  # a stranded task is skipped until a lease after its file last changed: polled, no fixed wait
            again = subprocess.run([sys.executable, str(script), "--batch", "10", "--json"], cwd=batch, env=env,
                                   capture_output=True, text=True, timeout=120)  # fmt: skip
            assert again.returncode in (0, 3) and "Traceback" not in again.stderr, again.stderr
            report = json.loads(subprocess.run([sys.executable, str(script), "--stats", "--json"], cwd=batch, env=env,
                                               capture_output=True, text=True, timeout=120).stdout)  # fmt: skip
            if report["completed"] == report["queue_total"] == 4:
                break
            assert time.monotonic() < deadline, report
            time.sleep(0.05)
        assert project.statuses() == {"c1": "done", "t1": "active", "t2": "active", "t3": "active"}
        consistent(project)


# -- the disk fills while a worker runs -------------------------------------------------------------------------------
FILL_THE_DISK = """
import os, sys
fd = os.open(os.path.join(os.environ["HYPERVISOR_TASKS"], ".filler"), os.O_WRONLY | os.O_CREAT, 0o644)
for size in (1 << 16, 1 << 12, 1):
    try:
        while True:
            os.write(fd, b"\\0" * size)
    except OSError:
        pass
os.close(fd)
"""
CRASHES = FILL_THE_DISK + "sys.exit(1)\n"
# Fills the disk, waits until the supervisor's renewals have failed for a whole lease, frees the disk, waits for the
# next renewal to get through, then completes its task: the run goes on (the failed renewals only noted).
OUTLASTS = (
    FILL_THE_DISK
    + """
import json, subprocess, time
task_id, token = sys.argv[1], sys.argv[2]
root = os.environ["HYPERVISOR_TASKS"]
def lease():
    with open(os.path.join(root, ".hypervisor", "claims", task_id + ".json")) as handle:
        return json.load(handle)["lease_expires_at"]
def until(condition):
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            sys.exit("timed out")
        time.sleep(0.02)
until(lambda: lease() < time.time())
os.unlink(os.path.join(root, ".filler"))
seen = lease()
until(lambda: lease() > seen)
subprocess.run([sys.executable, "-m", "hypervisor", "complete", task_id, "--token", token, "--summary", "outlasted"],
               check=True)
"""
)


def worker_script(project: Project, name: str, text: str) -> str:
    script = project.folder / f"{name}.py"
    script.write_text(text)
    return f"{sys.executable} {script} {{task_id}} {{token}}"


def test_a_worker_that_fills_the_disk_and_dies_leaves_its_task_to_rule_2(small_disk):
    """The worker fills the disk and exits without an outcome at max_attempts: the dead letter cannot be written, so
    the claim is given up (abandoned: the task is stranded), the entry is lost, no other task starts, the run says
    so in one last line and exits 1; once space returns the tools finish both tasks."""
    project = small_disk
    (project.folder / ".hypervisor.yaml").write_text(f"tasks: tasks\nlease: {LEASE}\nmax_attempts: 1\n")
    write_task(project.root, "x", title="Doomed", status="active", priority=0)
    write_task(project.root, "y", title="Waits", status="active", priority=1)
    ran = project.hv("run", "--agent", worker_script(project, "crash", CRASHES), "--workers", "1")
    assert "Traceback" not in ran.stdout + ran.stderr and ran.returncode == 1, ran.stderr
    last = ran.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hypervisor: cannot write {project.root / 'x.md'}: {ENOSPC}"), ran.stderr
    assert "x: lost" in ran.stdout and "the claim was given up" in ran.stdout, ran.stdout
    assert project.statuses() == {"x": "in_progress", "y": "active"} and not project.claims()
    consistent(project)
    (project.root / ".filler").unlink()
    finish_everything(project)


def test_renewals_that_fail_while_the_disk_is_full_are_noted_and_the_run_goes_on(small_disk):
    project = small_disk
    write_task(project.root, "x", title="Outlasts", status="active")
    ran = project.hv("run", "--agent", worker_script(project, "outlast", OUTLASTS), "--workers", "1", "--json")
    assert "Traceback" not in ran.stderr and ran.returncode == 0, ran.stderr
    assert f"x: renewing the lease: cannot write {project.root / '.hypervisor' / 'claims' / 'x.json'}: {ENOSPC}" in (
        ran.stderr
    )
    summary = json.loads(ran.stdout)
    assert summary["status"] == "finished" and "error" not in summary
    assert [(e["task_id"], e["status"], e["outcome"]) for e in summary["workers"]] == [("x", "done", "outlasted")]
    consistent(project)
