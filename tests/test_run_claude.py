"""`hypervisor run --agent claude` end to end: the real, pinned Claude Code as 4 parallel workers on 12 tasks, each
worker scripted by the fake model (one lane per task, matched by the "TASK-ID: <id>" line the supervisor puts in
the prompt). Workers complete, block, crash (SIGKILL of the claude process from its own Bash tool), crash once and
then succeed, or hang past the timeout; the supervisor must retry, dead-letter, kill and count tokens correctly,
never run a task twice at once, and leave no process behind. Fails, never skips, without the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
from claude_cli import hermetic_env
from conftest import write_task
from fake_model import FakeModel, Lane, first_user_text, last_tool_result, text, tool_results, tool_use

from hypervisor.supervisor.runs import summary_schema
from hypervisor.tasks import taskfile

PREFIX = "mcp__plugin_hypervisor_task_manager__"
HYPERVISOR = str(Path(sys.executable).with_name("hypervisor"))
TIMEOUT_S = 30  # a normal worker takes 5-12 s here, with 4 claude processes on 2 cores
MAX_ATTEMPTS = 2

OK = [f"ok{n}" for n in range(1, 8)]  # claim, write a file, complete
BLOCKED = ["blk1", "blk2"]  # claim, block with a reason
CRASH = "crash"  # claim, then SIGKILL its own claude process: every attempt -> dead letter
FLAKY = "flaky"  # crashes on attempt 1, succeeds on attempt 2
HANG = "hang"  # claim, then a Bash command that never ends: killed at the timeout, every attempt -> dead letter
ALL = [HANG, CRASH, FLAKY, *BLOCKED, *OK]  # also the priority order: the slow ones start first

# $PPID is the claude process. Claude Code runs each Bash command in a session of its own, so the `sleep` outlives
# claude and the worker's process group: the supervisor must still find and kill it.
KILL_SELF = {"command": "kill -9 $PPID; sleep 300", "description": "crash the agent"}


def marker(task_id: str) -> str:
    return f"TASK-ID: {task_id}\n"


def claim_token(request: dict) -> str:
    for result in tool_results(request):
        if '"claim_token"' in result["text"]:
            return json.loads(result["text"])["claim_token"]
    raise AssertionError("no claim result in the worker's conversation")


def claim(task_id: str):
    return tool_use(PREFIX + "claim_next_task", {"caller": "worker", "task_id": task_id})


def write_output(project: Path, task_id: str):
    return tool_use("Write", {"file_path": str(project / "out" / f"{task_id}.txt"), "content": f"{task_id} done\n"})


def complete(task_id: str):
    return lambda request: tool_use(PREFIX + "complete_task", {
        "id": task_id, "claim_token": claim_token(request), "summary": f"Wrote out/{task_id}.txt"})  # fmt: skip


def lanes(project: Path) -> list[Lane]:
    script = []
    for task_id in OK:
        script.append(Lane(task_id, [
            claim(task_id), write_output(project, task_id), complete(task_id),
            lambda request, task_id=task_id: text(f"TASK COMPLETE: {task_id}\nsummary: {last_tool_result(request)}"
                                                  "\ncommit: none"),
        ], match=marker(task_id)))  # fmt: skip
    for task_id in BLOCKED:
        script.append(Lane(task_id, [
            claim(task_id),
            lambda request, task_id=task_id: tool_use(PREFIX + "block_task", {
                "id": task_id, "claim_token": claim_token(request), "reason": f"{task_id} needs a decision"}),
            text(f"TASK BLOCKED: {task_id}\nreason: {task_id} needs a decision"),
        ], match=marker(task_id)))  # fmt: skip
    script.append(Lane(CRASH, [claim(CRASH), tool_use("Bash", KILL_SELF), text("unreachable")], match=marker(CRASH)))
    first_attempt = f"Attempt: 1 of {MAX_ATTEMPTS}"
    script.append(Lane(FLAKY, [
        claim(FLAKY),
        lambda request: tool_use("Bash", KILL_SELF) if first_attempt in first_user_text(request)
        else write_output(project, FLAKY),
        complete(FLAKY),
        text(f"TASK COMPLETE: {FLAKY}\nsummary: second try\ncommit: none"),
    ], match=marker(FLAKY)))  # fmt: skip
    script.append(Lane(HANG, [
        claim(HANG),
        tool_use("Bash", {"command": "tail -f /dev/null", "description": "hang", "timeout": 600000}),
        text("unreachable"),
    ], match=marker(HANG)))  # fmt: skip
    return script


def processes_of_run(run_id: str) -> dict[int, str]:
    """{pid: command} of every live process started under this run (its workers carry HYPERVISOR_RUN_ID)."""
    needle = f"HYPERVISOR_RUN_ID={run_id}".encode()
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            if needle in environ.split(b"\0"):
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200]
                found[int(pid)] = command.decode("utf-8", "replace")
        except OSError:
            continue
    return found


def test_run_with_claude_workers_retries_dead_letters_kills_and_counts(claude, tmp_path):
    project = tmp_path / "project"
    tasks = project / "tasks"
    for priority, task_id in enumerate(ALL):
        write_task(tasks, task_id, status="active", priority=min(priority, 3), title=f"Task {task_id}")
    (project / ".hypervisor.yaml").write_text(f"tasks: tasks\nmax_attempts: {MAX_ATTEMPTS}\n")
    home = tempfile.mkdtemp(prefix="claude-home-", dir=tmp_path)

    with FakeModel(lanes(project)) as model:
        env = hermetic_env(model.url, home, {"HYPERVISOR_CLAUDE": claude, "PYTHONDONTWRITEBYTECODE": "1"})
        env.pop("HYPERVISOR_TASKS", None)
        started = time.monotonic()
        proc = subprocess.run([HYPERVISOR, "run", "--agent", "claude", "--workers", "4", "--timeout", f"{TIMEOUT_S}s",
                               "--tasks", str(tasks), "--json"], cwd=project, env=env, capture_output=True, text=True,
                              timeout=240, stdin=subprocess.DEVNULL)  # fmt: skip
        wall = time.monotonic() - started
        problems = list(model.problems)
    described = f"exit {proc.returncode} after {wall:.0f}s\n--- stdout ---\n{proc.stdout[-4000:]}\n" \
                f"--- stderr ---\n{proc.stderr[-4000:]}"  # fmt: skip
    assert proc.returncode == 1, described  # 1: a task was dead-lettered
    summary = json.loads(proc.stdout)
    run_id = summary["run_id"]
    left = processes_of_run(run_id)
    for pid in left:  # don't leave them running if the supervisor did
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert left == {}, "a worker process outlived the run"
    jsonschema.Draft202012Validator(summary_schema()).validate(summary)
    assert summary == json.loads((tasks / ".hypervisor" / "runs" / run_id / "summary.json").read_text())
    assert not problems, problems  # every lane played as scripted, no request fell outside a lane

    # The summary: one entry per task, with the status its script implies.
    entries = {entry["task_id"]: entry for entry in summary["workers"]}
    assert len(summary["workers"]) == len(entries) == len(ALL), [e["task_id"] for e in summary["workers"]]
    expected = {**{t: "done" for t in OK}, **{t: "blocked" for t in BLOCKED}, FLAKY: "done",
                CRASH: "dead_letter", HANG: "dead_letter"}  # fmt: skip
    assert {t: e["status"] for t, e in entries.items()} == expected, described
    assert {t: e["attempts"] for t, e in entries.items()} == {
        t: MAX_ATTEMPTS if t in (CRASH, FLAKY, HANG) else 1 for t in ALL
    }
    assert summary["counts"] == {"done": len(OK) + 1, "triaged": 0, "blocked": len(BLOCKED), "dead_letter": 2, "released": 0,
                                 "lost": 0, "interrupted": 0}  # fmt: skip
    assert summary["status"] == "finished"

    hang = entries[HANG]
    assert f"killed at the {TIMEOUT_S}s timeout" in hang["reason"], hang
    assert hang["duration_s"] >= MAX_ATTEMPTS * TIMEOUT_S, hang
    assert "killed by SIGKILL" in entries[CRASH]["reason"], entries[CRASH]
    assert entries[FLAKY]["exit_codes"] == [-9, 0], entries[FLAKY]
    assert all(entries[t]["exit_codes"] == [0] for t in OK + BLOCKED), {t: entries[t]["exit_codes"] for t in ALL}
    for task_id in BLOCKED:
        assert entries[task_id]["reason"] == f"{task_id} needs a decision"

    # Tokens: counted from each worker's stream-json log.
    assert summary["total_tokens"] == sum(entry["tokens"] for entry in summary["workers"]) > 0
    for task_id, entry in entries.items():
        assert entry["tokens"] > 0, (task_id, entry)
        assert len(entry["logs"]) == entry["workers_started"] == entry["attempts"] and all(
            os.path.isfile(log) for log in entry["logs"]
        )

    # The task files: the state each script implies.
    docs = {task_id: taskfile.read_doc(str(tasks / f"{task_id}.md")).data for task_id in ALL}
    for task_id in [*OK, FLAKY]:
        assert docs[task_id]["status"] == "done", (task_id, docs[task_id])
        assert (project / "out" / f"{task_id}.txt").read_text() == f"{task_id} done\n"
    assert docs[FLAKY]["attempts"] == 2, docs[FLAKY]
    for task_id in BLOCKED:
        assert docs[task_id]["status"] == "blocked" and docs[task_id]["blocked_reason"] == f"{task_id} needs a decision"
    for task_id in (CRASH, HANG):
        assert docs[task_id]["status"] == "blocked" and docs[task_id]["blocked_reason"] == "max_attempts", docs[task_id]
        assert docs[task_id]["attempts"] == MAX_ATTEMPTS, docs[task_id]

    # The event log: each done task completed exactly once; nothing else completed.
    events = [json.loads(line) for line in (tasks / ".hypervisor" / "events.jsonl").read_text().splitlines()]
    completed = sorted(event["task"] for event in events if event.get("event") == "completed")
    assert completed == sorted([*OK, FLAKY]), completed
    dead = sorted(event["task"] for event in events if event.get("event") == "dead_letter")
    assert dead == sorted([CRASH, HANG]), dead

    # Every attempt ran in its own claude process with the run's prompt; each one's first request names its attempt.
    for task_id in ALL:
        attempts = {line for request in model.lane_requests(task_id)
                    for line in first_user_text(request).splitlines() if line.startswith("Attempt: ")}  # fmt: skip
        assert attempts == {f"Attempt: {n} of {MAX_ATTEMPTS}" for n in range(1, entries[task_id]["attempts"] + 1)}
