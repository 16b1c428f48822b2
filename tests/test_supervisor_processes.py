"""`hypervisor run` and `hypervisor status` with real processes: the CLI, real worker processes (scripted_worker.py),
real signals (timeouts kill the whole process group, Ctrl-C drains, a second Ctrl-C stops), git worktrees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import HYPERVISOR, make_queue, run_cli, wait_for, write_task

from hypervisor.core.timeutil import now
from hypervisor.supervisor.runs import load_run, validate_summary
from hypervisor.tasks.taskfile import read_doc

WORKER = str(Path(__file__).with_name("scripted_worker.py"))
SCRIPTED = f"{sys.executable} {WORKER} task"


def data(root: Path, task_id: str) -> dict:
    return read_doc(str(root / f"{task_id}.md")).data


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def start_run(root: Path, *args: str, cwd: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("HYPERVISOR_TASKS", None)
    return subprocess.Popen([*HYPERVISOR, "run", "--tasks", str(root), "--json", *args], cwd=cwd or root.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def said(proc: subprocess.Popen, needle: str, timeout: float = 60.0) -> str:
    """Read the run's stderr up to the first line holding `needle` (the rest stays for communicate()); what was read."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:  # a byte at a time from the pipe itself: nothing is buffered that communicate() would miss
        line = b""
        while byte := os.read(proc.stderr.fileno(), 1):
            line += byte
            if byte == b"\n":
                lines.append(line.decode(errors="replace"))
                line = b""
                if needle in lines[-1]:
                    found.set()
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found.is_set():
        proc.kill()
        raise AssertionError(f"the run never said {needle!r}: {''.join(lines)}")
    return "".join(lines)


def running_view(root: Path) -> dict | None:
    try:
        view = load_run(str(root / ".hypervisor"))
    except Exception:  # noqa: BLE001 - not written yet
        return None
    return view if view.get("running") else None


def test_cli_run_ends_each_task_as_its_worker_did_and_writes_a_valid_summary(root, backend):
    write_task(root, "ok-1", script="complete")
    write_task(root, "ok-2", script="sleep-complete 0.5")
    write_task(root, "stop", script="block")
    write_task(root, "crashy", script="crash")
    write_task(root.parent / "tasks", "later", script="complete", depends_on=["ok-1"])
    (root.parent / ".hypervisor.yaml").write_text("max_attempts: 2\n")
    result = run_cli("run", "--tasks", str(root), "--workers", "3", "--agent", SCRIPTED, "--json", "--backend", backend,
                     cwd=root.parent)  # fmt: skip
    assert result.returncode == 1, result.stderr  # a task was dead-lettered
    summary = json.loads(result.stdout)
    validate_summary(summary)
    by_id = {entry["task_id"]: entry for entry in summary["workers"]}
    assert sorted(by_id) == ["crashy", "later", "ok-1", "ok-2", "stop"]
    assert by_id["ok-1"]["status"] == by_id["ok-2"]["status"] == by_id["later"]["status"] == "done"
    assert by_id["stop"]["status"] == "blocked" and by_id["stop"]["reason"] == "stop needs a person"
    crashy = by_id["crashy"]
    assert crashy["status"] == "dead_letter" and crashy["attempts"] == 2
    assert crashy["exit_codes"] == [-signal.SIGKILL, -signal.SIGKILL]
    assert "killed by SIGKILL" in crashy["reason"]
    assert data(root, "crashy")["blocked_reason"] == "max_attempts"
    for task_id in ("ok-1", "ok-2", "later"):
        assert data(root, task_id)["status"] == "done"
    events = [event["event"] for event in make_queue(root, backend).events()]
    assert events.count("completed") == 3 and events.count("dead_letter") == 1, events
    log = Path(by_id["ok-2"]["log"])
    assert log.is_file() and "sleep-complete" in log.read_text()
    assert log.parent == root / ".hypervisor" / "runs" / summary["run_id"] / "logs"
    on_disk = json.loads((log.parent.parent / "summary.json").read_text())
    assert on_disk == summary
    # progress went to stderr as plain lines (not a terminal), one per start and finish
    assert result.stderr.count(" started (attempt ") == 6
    # the run can be read back
    status = run_cli("status", "--tasks", str(root), "--json", check=0)
    assert json.loads(status.stdout)["summary"]["run_id"] == summary["run_id"]
    text = run_cli("status", "--tasks", str(root), check=0).stdout
    assert f"run {summary['run_id']}: finished" in text and "dead_letter" in text


def test_timeout_kills_the_whole_process_group(root, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    write_task(root, "stuck")
    (root.parent / ".hypervisor.yaml").write_text("max_attempts: 1\n")
    # The worker is a shell that starts its own child at once (no interpreter to load first, so the child exists
    # long before the timeout even on a loaded machine), then waits for it.
    agent = f"sh -c 'sleep 3600 & echo $! > {pid_file}; wait'"
    started = time.monotonic()
    result = run_cli("run", "--tasks", str(root), "--agent", agent, "--timeout", "2s", "--json", cwd=root.parent)
    elapsed = time.monotonic() - started
    summary = json.loads(result.stdout)
    [entry] = summary["workers"]
    assert entry["status"] == "dead_letter" and "killed at the 2s timeout" in entry["reason"]
    assert entry["exit_codes"] == [-signal.SIGTERM]
    assert entry["duration_s"] >= 2
    assert pid_file.exists(), "the worker was stopped before it started its child"
    grandchild = int(pid_file.read_text())
    assert not alive(grandchild), "the worker's own child survived the timeout"
    assert elapsed < 60


def test_first_ctrl_c_drains_running_workers_finish_no_new_claims(root, tmp_path):
    go = tmp_path / "go"  # each worker completes once this exists: the first is still running at the Ctrl-C
    for name in ("a", "b", "c"):
        write_task(root, name, script=f"wait-complete {go}")
    proc = start_run(root, "--workers", "1", "--agent", SCRIPTED)
    wait_for(lambda: running_view(root), "the first worker to start")
    proc.send_signal(signal.SIGINT)
    early = said(proc, "draining")
    go.touch()
    out, err = proc.communicate(timeout=60)
    err = early + err
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["status"] == "drained"
    assert [entry["task_id"] for entry in summary["workers"]] == ["a"]
    assert summary["workers"][0]["status"] == "done"
    assert "draining" in err
    assert data(root, "a")["status"] == "done"
    assert "status" not in data(root, "b") and "status" not in data(root, "c")  # never touched


def test_second_ctrl_c_stops_workers_and_releases_their_tasks(root):
    write_task(root, "long-1", script="hang")
    write_task(root, "long-2", script="hang")
    proc = start_run(root, "--workers", "2", "--agent", SCRIPTED)
    view = wait_for(lambda: (v := running_view(root)) and len(v["running"]) == 2 and v, "two workers to start")
    pids = [item["pid"] for item in view["running"]]
    proc.send_signal(signal.SIGINT)
    said(proc, "draining")  # the first Ctrl-C was taken; a second one now stops the workers
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads(out)
    assert summary["status"] == "interrupted"
    assert {entry["status"] for entry in summary["workers"]} == {"interrupted"}
    for task_id in ("long-1", "long-2"):
        task = data(root, task_id)
        assert task["status"] == "inbox" and task.get("attempts", 0) == 0, task  # given back, attempt not counted
    assert not [pid for pid in pids if alive(pid)]
    assert not list((root / ".hypervisor" / "claims").glob("*.json"))


def test_status_reads_a_running_run_from_disk(root, tmp_path):
    go = tmp_path / "go"  # the worker runs until the status checks are done
    write_task(root, "slow", script=f"wait-complete {go}")
    proc = start_run(root, "--agent", SCRIPTED)
    try:
        view = wait_for(lambda: running_view(root), "the worker to start")
        status = run_cli("status", "--tasks", str(root), "--json", check=0)
        live = json.loads(status.stdout)
        assert live["status"] == "running" and live["run_id"] == view["run_id"]
        assert [item["task_id"] for item in live["running"]] == ["slow"]
        text = run_cli("status", "--tasks", str(root), check=0).stdout
        assert "running w1-" in text and "slow" in text
    finally:
        go.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["workers"][0]["status"] == "done"


def test_a_killed_supervisor_is_reported_dead_and_its_claims_expire_for_the_next_run(root, backend):
    write_task(root, "orphaned", script="hang")
    (root.parent / ".hypervisor.yaml").write_text(f"lease: 1s\nbackend: '{backend}'\n")
    proc = start_run(root, "--agent", SCRIPTED)
    view = wait_for(lambda: running_view(root), "the worker to start")
    proc.kill()
    proc.wait(timeout=30)
    os.killpg(view["running"][0]["pid"], signal.SIGKILL)  # the worker had its own group; the test cleans it up
    assert json.loads(run_cli("status", "--tasks", str(root), "--json", check=0).stdout)["status"] == "dead"
    queue = make_queue(root, backend)
    wait_for(lambda: queue.read_claim("orphaned").expired(now()), "the dead run's lease to run out")
    (root / "orphaned.md").write_text((root / "orphaned.md").read_text().replace("script: hang", "script: complete"))
    result = run_cli("run", "--tasks", str(root), "--agent", SCRIPTED, "--json", cwd=root.parent, check=0)
    summary = json.loads(result.stdout)
    assert summary["reclaimed"][0]["task_id"] == "orphaned"
    assert summary["workers"][0]["status"] == "done"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip


def test_worktree_isolation_puts_each_task_on_its_own_branch(tmp_path):
    project = tmp_path / "project"
    root = project / "tasks"
    root.mkdir(parents=True)
    write_task(root, "writes", script="write-file result-writes.txt")
    write_task(root, "commits", script="commit-file result-commits.txt")
    write_task(root, "noop", script="complete")
    git("init", "-q", "-b", "main", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-qm", "tasks", cwd=project)
    base = git("rev-parse", "HEAD", cwd=project)
    result = run_cli("run", "--tasks", str(root), "--agent", SCRIPTED, "--isolation", "worktree", "--json",
                     cwd=project, check=0)  # fmt: skip
    by_id = {entry["task_id"]: entry for entry in json.loads(result.stdout)["workers"]}
    assert {entry["status"] for entry in by_id.values()} == {"done"}
    for task_id in ("writes", "commits"):
        entry = by_id[task_id]
        assert entry["branch"] == f"hypervisor/{task_id}"
        assert git("rev-parse", entry["branch"], cwd=project) == entry["commit"]
        assert git("show", f"{entry['commit']}:result-{task_id}.txt", cwd=project) == f"work for {task_id}"
        assert git("merge-base", entry["commit"], "main", cwd=project) == base  # branched from HEAD, not merged
        assert not (project / f"result-{task_id}.txt").exists()
    assert data(root, "commits")["commit"] == by_id["commits"]["commit"]  # the worker's own commit
    assert "left uncommitted" in git("log", "-1", "--format=%s", by_id["writes"]["commit"], cwd=project)
    assert by_id["noop"]["branch"] is None  # nothing done on it: no branch left behind
    assert "hypervisor/noop" not in git("branch", "--list", cwd=project)
    assert git("rev-parse", "HEAD", cwd=project) == base
    assert git("worktree", "list", "--porcelain", cwd=project).count("worktree ") == 1


def test_worktree_isolation_outside_git_is_refused(root):
    write_task(root, "a", script="complete")
    result = run_cli("run", "--tasks", str(root), "--agent", SCRIPTED, "--isolation", "worktree", cwd=root.parent)
    assert result.returncode == 2
    assert "--isolation worktree needs a git repository" in result.stderr
    assert "status" not in data(root, "a")


@pytest.mark.parametrize(
    ("agent", "message"),
    [
        ("no-such-agent-binary {task_id}", "the command 'no-such-agent-binary' was not found on PATH"),
        ("'unbalanced", "cannot split the command"),
    ],
)
def test_an_agent_that_cannot_run_is_refused_before_any_claim(root, agent, message):
    write_task(root, "a")
    result = run_cli("run", "--tasks", str(root), "--agent", agent, cwd=root.parent)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (root / ".hypervisor" / "claims").exists() or not list((root / ".hypervisor" / "claims").iterdir())


def test_nothing_to_run_exits_3_and_dry_run_claims_nothing(root):
    write_task(root, "finished", status="done")
    result = run_cli("run", "--tasks", str(root), cwd=root.parent)
    assert result.returncode == 3 and "nothing to run" in result.stderr
    write_task(root, "fresh")
    dry = run_cli("run", "--tasks", str(root), "--dry-run", cwd=root.parent, check=0)
    assert "ready: 1" in dry.stdout and "nothing was claimed" in dry.stdout
    assert "status" not in data(root, "fresh")


def test_help_teaches_the_options():
    text = run_cli("run", "--help", check=0).stdout
    for needle in ("--workers", "--agent", "--timeout", "--isolation", "--dry-run", "Ctrl-C", "{task_id}", "Exit:"):
        assert needle in text


def test_the_readme_quick_start_demo_runs_the_supervisor_over_the_examples():
    """`python3 dev.py demo`: the README's first command, as a user runs it."""
    from conftest import REPO

    result = subprocess.run([sys.executable, str(REPO / "dev.py"), "demo"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary_line = [line for line in result.stdout.splitlines() if line.startswith("summary: ")]
    assert summary_line, result.stdout[-3000:]
    summary = json.loads(Path(summary_line[0].split(": ", 1)[1]).read_text())
    validate_summary(summary)
    assert summary["status"] == "finished" and summary["agent"] == "triage"
    statuses = [entry["status"] for entry in summary["workers"]]
    assert statuses.count("done") == 2 and statuses.count("triaged") == 26  # 2 closed, 26 triaged
    assert all(e["reason"].startswith("assignee=") for e in summary["workers"] if e["status"] == "triaged")
    assert summary["counts"] == {"done": 2, "triaged": 26, "blocked": 0, "released": 0, "dead_letter": 0, "lost": 0,
                                 "interrupted": 0}  # fmt: skip
    # attempts as each task's file says (triage's claims do not count); the run started one worker on each
    tasks = Path(summary["task_root"])
    for entry in summary["workers"]:
        path = next(tasks.rglob(f"{entry['task_id']}.md"))
        assert entry["attempts"] == (read_doc(str(path)).data.get("attempts") or 0) == 0, entry
        assert entry["workers_started"] == 1
        if entry["status"] == "done":  # closed by triage: the assignee it had before, never the worker's name
            assert entry["reason" if "reason" in entry else "outcome"].startswith("closed by triage: ")
            original = read_doc(str(REPO / "examples" / "tasks" / path.relative_to(tasks))).data.get("assignee")
            assert read_doc(str(path)).data.get("assignee") == original != entry["worker"]
    # the header counts what runs now and what waits; the end line and the printed summary give one runtime
    assert "28 task(s) ready, 6 waiting on dependencies" in result.stderr, result.stderr[:2000]
    assert " released " not in result.stderr and "released 26" not in result.stdout
    ends = [line.split(" ", 1)[1] for line in result.stderr.splitlines() if line.endswith(" tokens")]
    ends += [line for line in result.stdout.splitlines() if line.startswith(f"run {summary['run_id']} ")]
    assert len(ends) == 2 and ends[0] == ends[1], ends
    assert f"in {summary['runtime_seconds']:.1f}s: done 2, triaged 26;" in ends[0]
    assert summary["skipped_preflight"]["done"] and summary["skipped_preflight"]["blocked_deps"]
    assert len(summary["skipped_preflight"]["invalid"]) == 4  # examples/tasks/malformed/, on purpose
    assert "4 task file(s) are invalid" in result.stdout + result.stderr
    assert len({entry["task_id"] for entry in summary["workers"]}) == len(summary["workers"])


@pytest.mark.parametrize(
    ("agent", "env", "message"),
    [
        ("claude", {"HYPERVISOR_CLAUDE": "/nonexistent/claude"}, "--agent claude: the `claude` command was not found"),
        ("gemini", {"HYPERVISOR_GEMINI": "/nonexistent/gemini"}, "--agent gemini: the `gemini` command was not found"),
        ("gemini", {"HYPERVISOR_GEMINI": "/bin/true"}, "the hypervisor extension is not installed for this user"),
    ],
)
def test_a_missing_cli_or_extension_is_named_with_the_fix(root, tmp_path, agent, env, message):
    write_task(root, "a")
    result = run_cli("run", "--tasks", str(root), "--agent", agent, cwd=root.parent,
                     env={"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", **env})  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr
    if "extension" in message:
        assert "gemini extensions link" in result.stderr and "--consent" in result.stderr
    assert "status" not in data(root, "a")


@pytest.mark.parametrize(
    ("agent", "needles"),
    [
        ("./does-not-exist.sh {{task_id}}", ["'./does-not-exist.sh'", "does not exist", "give the path of an executable"]),
        ("{exe} {{task_id}} {{bogus}}", ["unknown placeholder(s) {bogus}", "allowed: {task_id} {token} {task_file}"]),
        ("{plain} {{task_id}}", ["is not executable", "chmod +x"]),
    ],
)  # fmt: skip
def test_run_refuses_an_agent_path_or_placeholder_before_claiming(root, tmp_path, agent, needles):
    """Before: the task was claimed, then "released after 0s: could not start the worker", exit 0."""
    write_task(root, "a")
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\n")
    result = run_cli("run", "--tasks", str(root), "--agent", agent.format(exe=sys.executable, plain=plain),
                     cwd=root.parent)  # fmt: skip
    assert result.returncode == 2, (result.stdout, result.stderr)
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert "status" not in data(root, "a") and not (root / ".hypervisor" / "runs").exists()
    assert not (root / ".hypervisor" / "claims").exists() or not list((root / ".hypervisor" / "claims").iterdir())


def test_dry_run_shows_the_first_workers_command_and_environment_and_the_invalid_files(root):
    write_task(root, "first", priority=0, attempts=2, script="complete")
    write_task(root, "second", priority=1)
    (root / "broken.md").write_text("---\nstatus: [not, a, status\n---\n")
    text = run_cli("run", "--tasks", str(root), "--agent", SCRIPTED + " {task_id} {attempt}", "--dry-run",
                   cwd=root.parent, check=0).stdout  # fmt: skip
    assert "ready: 2" in text
    # the workers start in root.parent, where ./tasks is the default task root: the hint needs no --tasks there
    assert "1 task file(s) are invalid and were left out: `hypervisor validate` says why" in text
    assert "on first (attempt 3)" in text, text
    assert f"  command: {sys.executable} {WORKER} task first 3\n" in text, text
    assert "    HYPERVISOR_WORKER=1\n" in text and "    HYPERVISOR_TASK_ID=first\n" in text
    assert "    HYPERVISOR_CLAIM_TOKEN=<claim-token>\n" in text and f"    HYPERVISOR_TASKS={root}\n" in text
    assert "HYPERVISOR_WORKER_NAME=w1-" in text and "HYPERVISOR_RUN_ID=" in text
    assert "would start 2 of 4 worker(s)" in text and "nothing was claimed" in text
    report = json.loads(run_cli("run", "--tasks", str(root), "--agent", SCRIPTED, "--dry-run", "--json",
                                cwd=root.parent, check=0).stdout)  # fmt: skip
    first = report["first_worker"]
    assert first["task_id"] == "first" and first["attempt"] == 3 and first["argv"][-1] == "task"
    assert first["env"]["HYPERVISOR_CLAIM_TOKEN"] == first["env"]["HYPERVISOR_CLAIM"] == "<claim-token>"
    assert report["invalid"] == ["broken.md"] and report["would_start"] == 2
    assert "status" not in data(root, "first") and data(root, "first")["attempts"] == 2
    assert not (root / ".hypervisor" / "claims").exists() or not list((root / ".hypervisor" / "claims").iterdir())


def test_attempts_are_the_tasks_own_count_in_progress_summary_and_status(root):
    """Before: `attempt 1` in progress where the file said 2, `dead_letter (2 attempt(s))` beside max_attempts 3."""
    write_task(root, "crashy", attempts=1, script="crash")
    result = run_cli("run", "--tasks", str(root), "--agent", SCRIPTED, "--workers", "1", cwd=root.parent, check=1)
    assert "crashy started (attempt 2 of 3," in result.stderr and "crashy started (attempt 3 of 3," in result.stderr
    assert "crashy retry after " in result.stderr and "(attempts: 2 of 3)" in result.stderr
    assert (
        "crashy dead_letter after " in result.stderr and "(attempts: 3 of 3): max_attempts: 3 attempts" in result.stderr
    )
    assert data(root, "crashy")["attempts"] == 3
    summary = json.loads(Path(result.stdout.strip().splitlines()[-1].split(": ", 1)[1]).read_text())
    [entry] = summary["workers"]
    assert entry["attempts"] == 3 and entry["workers_started"] == 2 and summary["max_attempts"] == 3
    assert "crashy: dead_letter (attempts: 3 of 3, " in result.stdout
    status = run_cli("status", "--tasks", str(root), check=0).stdout
    assert "dead_letter  crashy (attempts: 3 of 3): max_attempts: 3 attempts" in status, status
