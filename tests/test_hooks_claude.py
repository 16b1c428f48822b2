"""The hooks inside the real Claude Code: a `hypervisor:worker` subagent is held to its claim and scope, the main
session is not, and the task ends with the worker's log. Fails, never skips, without the CLI."""

from __future__ import annotations

import json

from claude_cli import run_claude
from conftest import REPO, write_task
from fake_model import FakeModel, Lane, last_tool_result, text, tool_results, tool_use

PREFIX = "mcp__plugin_hypervisor_task_manager__"
MARKER = "TASK-ID: t1\n"


def claim_token(request: dict) -> str:
    for result in tool_results(request):
        if '"claim_token"' in result["text"]:
            return json.loads(result["text"])["claim_token"]
    raise AssertionError("no claim result in the worker's conversation")


def test_a_worker_subagent_edits_only_under_its_claim_and_scope(claude, tmp_path):
    project = tmp_path / "project"
    tasks = project / "tasks"
    write_task(tasks, "t1", status="active", title="Add the orders model", scope=["models/orders/**"])
    (project / ".hypervisor.yaml").write_text("tasks: tasks\n")
    inside, outside, main_file = project / "models/orders/orders.sql", project / "docs/orders.md", project / "NOTES.md"
    worker = [
        tool_use("Write", {"file_path": str(inside), "content": "select 1\n"}),  # before claiming: refused
        tool_use(PREFIX + "claim_next_task", {"caller": "w1", "task_id": "t1"}),
        tool_use("Write", {"file_path": str(inside), "content": "select 1\n"}),  # under the claim: goes through
        tool_use("Write", {"file_path": str(outside), "content": "# orders\n"}),  # outside scope: refused
        lambda request: tool_use(
            PREFIX + "complete_task",
            {"id": "t1", "claim_token": claim_token(request), "summary": "Added the orders model"},
        ),  # fmt: skip
        lambda request: text("WORKER-DONE " + last_tool_result(request)),
    ]
    main = [
        tool_use(
            "Agent",
            {
                "description": "worker t1",
                "prompt": MARKER + "Do task t1.",
                "subagent_type": "hypervisor:worker",
                "run_in_background": False,
            },
        ),  # fmt: skip
        tool_use("Write", {"file_path": str(main_file), "content": "main session notes\n"}),  # never gated
        text("MAIN-DONE"),
    ]
    with FakeModel([Lane("main", main), Lane("worker", worker, match=MARKER)]) as model:
        result = run_claude("Work the queue with one worker.", plugin_dir=REPO, cwd=project, model_url=model.url,
                            claude=claude)  # fmt: skip
        worker_requests = model.lane_requests("worker")
    assert not result.is_error, result.describe()
    assert model.played("worker") == len(worker) and not model.problems, model.problems

    results = tool_results(worker_requests[-1])
    before_claim, claimed, edit, out_of_scope, completed = results
    assert before_claim["is_error"] and "holds no claim" in before_claim["text"], before_claim
    assert PREFIX + "claim_next_task" in before_claim["text"], "the refusal tells the model what to do"
    assert not claimed["is_error"] and json.loads(claimed["text"])["id"] == "t1"
    assert not edit["is_error"], edit
    assert out_of_scope["is_error"] and "outside the scope of task t1 (models/orders/**)" in out_of_scope["text"]
    assert not completed["is_error"] and json.loads(completed["text"])["status"] == "done"

    assert inside.read_text() == "select 1\n" and not outside.exists()
    assert main_file.read_text() == "main session notes\n", "the main session's edit is not gated"
    denied = [d["tool_name"] for d in result.json.get("permission_denials", [])]
    assert denied == ["Write", "Write"], result.json.get("permission_denials")

    body = (tasks / "t1.md").read_text()
    assert "status: done" in body
    log = body.split("## Worker log", 1)[1]
    assert "w1 (hypervisor:worker " in log and "**done**" in log and "Added the orders model" in log
    assert "files: `models/orders/orders.sql`" in log, log
    assert "tool calls" in log
