"""`/hypervisor:pull <id>` as an Agent prompt, in the real Claude Code: Agent prompts reach the subagent as raw text
and a `hypervisor:worker` has no Skill tool, so the PreToolUse hook on Agent spells the command out, and the worker
claims exactly that task, not the queue's first. Fails, never skips, without the CLI."""

from __future__ import annotations

import json
import re

import pytest
from claude_cli import run_claude
from conftest import REPO, write_task
from fake_model import FakeModel, Lane, first_user_text, is_subagent, last_tool_result, text, tool_results, tool_use

from hypervisor.hooks.edge import pull_prompt

PREFIX = "mcp__plugin_hypervisor_task_manager__"


def task_id_from_prompt(request: dict) -> str:
    """What a model reads from its instructions: the id it is told to claim."""
    found = re.search(r'task_id "([^"]+)"', first_user_text(request))
    assert found, f"no task id in the worker's prompt: {first_user_text(request)[:300]!r}"
    return found.group(1)


def prompt_text(request: dict) -> str:
    """The Agent prompt as the subagent got it: the last text block of its first user message (system reminders
    come first)."""
    message = next(m for m in request["messages"] if m["role"] == "user")
    content = message["content"]
    blocks = [content] if isinstance(content, str) else [b["text"] for b in content if b.get("type") == "text"]
    return blocks[-1].strip()


def claim_result(request: dict) -> dict:
    for result in tool_results(request):
        if '"claim_token"' in result["text"]:
            return json.loads(result["text"])
    raise AssertionError("no claim result in the worker's conversation")


@pytest.mark.parametrize("command, extra", [("/hypervisor:pull", ""), ("/pull", "Note what you changed.")],
                         ids=["hypervisor-pull", "pull-with-more-text"])  # fmt: skip
def test_a_worker_started_with_pull_claims_exactly_that_task(claude, tmp_path, command, extra):
    project = tmp_path / "project"
    tasks = project / "tasks"
    first = write_task(tasks, "t1", status="active", title="First in the queue", priority=0)
    write_task(tasks, "t2", status="active", title="The pulled one", priority=2)
    (project / ".hypervisor.yaml").write_text("tasks: tasks\n")
    t1_before = first.read_bytes()
    spelled_out = pull_prompt(command, "t2", extra)
    worker = [
        lambda request: tool_use(PREFIX + "claim_next_task", {"caller": "w1", "task_id": task_id_from_prompt(request)}),
        lambda request: tool_use(
            PREFIX + "complete_task",
            {
                "id": claim_result(request)["id"],
                "claim_token": claim_result(request)["claim_token"],
                "summary": "Did the pulled task",
            },
        ),  # fmt: skip
        lambda request: text("TASK COMPLETE: t2 " + last_tool_result(request)),
    ]
    prompt = f"{command} t2" + (f" {extra}" if extra else "")
    main = [
        tool_use(
            "Agent",
            {
                "description": "pull t2",
                "prompt": prompt,
                "subagent_type": "hypervisor:worker",
                "run_in_background": False,
            },
        ),  # fmt: skip
        text("MAIN-DONE"),
    ]

    def told_to_pull(request: dict) -> bool:
        return is_subagent(request) and spelled_out in first_user_text(request)

    lanes = [Lane("main", main), Lane("worker", worker, match=told_to_pull)]
    with FakeModel(lanes) as model:
        result = run_claude("Pull task t2 with a worker.", plugin_dir=REPO, cwd=project, model_url=model.url,
                            claude=claude)  # fmt: skip
        worker_requests = model.lane_requests("worker")
    assert not result.is_error, result.describe()
    assert model.played("worker") == len(worker) and not model.problems, model.problems

    received = prompt_text(worker_requests[0])
    assert received == spelled_out, f"the worker was told {received[:400]!r}"
    assert received.startswith("Your task is t2") and f'{PREFIX}claim_next_task with task_id "t2"' in received
    assert not extra or received.endswith("\n\n" + extra)
    claimed, completed = tool_results(worker_requests[-1])
    assert not claimed["is_error"] and json.loads(claimed["text"])["id"] == "t2", claimed
    assert not completed["is_error"] and json.loads(completed["text"])["status"] == "done", completed

    assert "status: done" in (tasks / "t2.md").read_text()
    assert first.read_bytes() == t1_before, "t1, first in the queue, was touched"
    assert not (tasks / ".hypervisor" / "claims" / "t1.json").exists()
    events = (tasks / ".hypervisor" / "events.jsonl").read_text()
    assert '"t1"' not in events, events
