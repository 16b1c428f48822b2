"""`hypervisor run --agent claude --isolation worktree --land` end to end: the real, pinned Claude Code as two
workers (scripted by the fake model), each changing a file in its own worktree and completing its task; both
changes are verified and land on the project's branch. Fails, never skips, without the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from claude_cli import hermetic_env
from conftest import write_task
from fake_model import FakeModel, Lane, last_tool_result, text, tool_results, tool_use

from hypervisor.supervisor.runs import validate_summary
from hypervisor.tasks import taskfile

PREFIX = "mcp__plugin_hypervisor_task_manager__"
HYPERVISOR = str(Path(sys.executable).with_name("hypervisor"))
TASKS = ("alpha", "beta")


def claim_token(request: dict) -> str:
    for result in tool_results(request):
        if '"claim_token"' in result["text"]:
            return json.loads(result["text"])["claim_token"]
    raise AssertionError("no claim result in the worker's conversation")


def lane(task_id: str) -> Lane:
    write = {"command": f"printf '{task_id} landed\\n' > {task_id}.txt && pwd", "description": "change a file"}
    return Lane(task_id, [
        tool_use(PREFIX + "claim_next_task", {"caller": "worker", "task_id": task_id}),
        tool_use("Bash", write),
        lambda request: tool_use(PREFIX + "complete_task", {
            "id": task_id, "claim_token": claim_token(request), "summary": f"wrote {task_id}.txt"}),
        lambda request: text(f"TASK COMPLETE: {task_id}\nsummary: {last_tool_result(request)}\ncommit: none"),
    ], match=f"TASK-ID: {task_id}\n")  # fmt: skip


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip


def test_two_claude_workers_changes_land_on_the_branch(claude, tmp_path):
    project = tmp_path / "project"
    tasks = project / "tasks"
    for task_id in TASKS:
        write_task(tasks, task_id, status="active", title=f"Task {task_id}")
    (project / "verify.sh").write_text('for f in *.txt; do [ -e "$f" ] && grep -q landed "$f" || exit 1; done\n')
    (project / ".hypervisor.yaml").write_text("tasks: tasks\nverify: sh verify.sh\n")
    (project / "readme.txt").write_text("landed here\n")
    git("init", "-q", "-b", "main", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-qm", "base", cwd=project)
    base = git("rev-parse", "main", cwd=project)
    home = tempfile.mkdtemp(prefix="claude-home-", dir=tmp_path)
    with FakeModel([lane(task_id) for task_id in TASKS]) as model:
        env = hermetic_env(model.url, home, {"HYPERVISOR_CLAUDE": claude, "PYTHONDONTWRITEBYTECODE": "1"})
        env.pop("HYPERVISOR_TASKS", None)
        proc = subprocess.run([HYPERVISOR, "run", "--agent", "claude", "--workers", "2", "--timeout", "120s",
                               "--isolation", "worktree", "--land", "--json"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
        problems = list(model.problems)
    described = f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, described
    assert not problems, problems
    summary = json.loads(proc.stdout)
    validate_summary(summary)
    assert sorted(summary["land"]["landed"]) == sorted(TASKS) and summary["land"]["from"] == base, described
    tip = git("rev-parse", "main", cwd=project)
    assert summary["land"]["to"] == tip != base
    for entry in summary["workers"]:
        assert entry["status"] == "done" and entry["verified"] is True and entry["landed"] is True, entry
        assert entry["tokens"] > 0
    for task_id in TASKS:
        assert (project / f"{task_id}.txt").read_text() == f"{task_id} landed\n"  # the checkout moved with main
        doc = taskfile.read_doc(str(tasks / f"{task_id}.md"))
        assert doc.data["status"] == "done" and "landed on main" in doc.body
    assert len(git("rev-list", "--first-parent", f"{base}..main", cwd=project).split()) == 2
