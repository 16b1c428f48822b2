"""The hooks inside the real Gemini CLI (the extension in gemini/, linked): a worker session is held to its claim and
scope, a plain session is not, and the task ends with the worker's log. Fails, never skips, without the CLI."""

from __future__ import annotations

import json

from conftest import REPO, write_task
from fake_gemini import FakeGemini, call, function_responses, response_text, text
from gemini_cli import run_gemini

CLAIM = "mcp_task_manager_claim_next_task"


def claimed_task(request: dict) -> dict:
    for response in function_responses(request):
        if response["name"] == CLAIM:
            output = response_text(response)
            return json.loads(output[output.index("{") : output.rindex("}") + 1])
    raise AssertionError("no claim result in the conversation")


def test_a_gemini_worker_edits_only_under_its_claim_and_scope(gemini, tmp_path):
    project = tmp_path / "project"
    tasks = project / "tasks"
    write_task(tasks, "t1", status="active", title="Add the orders model", scope=["models/orders/**"])
    (project / ".hypervisor.yaml").write_text("tasks: tasks\n")
    home = tmp_path / "home"
    worker = [
        call("write_file", {"file_path": "models/orders/orders.sql", "content": "select 1\n"}),  # refused
        call(CLAIM, {"caller": "gemini-w1", "task_id": "t1"}),
        call("write_file", {"file_path": "models/orders/orders.sql", "content": "select 1\n"}),  # goes through
        call("write_file", {"file_path": "docs/orders.md", "content": "# orders\n"}),  # outside scope: refused
        lambda request: call("mcp_task_manager_complete_task", {
            "id": "t1", "claim_token": claimed_task(request)["claim_token"], "summary": "Added the orders model"}),
        text("WORKER-DONE"),
    ]  # fmt: skip
    with FakeGemini(worker) as model:
        result = run_gemini("Do task t1.", project, model.url, extension_dir=REPO / "gemini", home=home,
                            env={"HYPERVISOR_WORKER": "1"}, gemini=gemini)  # fmt: skip
        last = model.requests[-1]
    assert result.returncode == 0, result.describe()
    assert model.played("main") == len(worker) and not model.problems, (model.problems, result.describe())

    before_claim, claimed, edit, out_of_scope, completed = function_responses(last)
    assert "error" in before_claim["response"], before_claim
    assert "holds no claim" in response_text(before_claim) and CLAIM in response_text(before_claim)
    assert claimed_task(last)["id"] == "t1"
    assert "error" not in edit["response"], edit
    assert "outside the scope of task t1 (models/orders/**)" in response_text(out_of_scope), out_of_scope
    assert '"status": "done"' in response_text(completed) or '"status":"done"' in response_text(completed)
    assert (project / "models/orders/orders.sql").read_text() == "select 1\n"
    assert not (project / "docs/orders.md").exists()
    body = (tasks / "t1.md").read_text()
    log = body.split("## Worker log", 1)[1]
    assert "gemini-w1 (session " in log and "**done**" in log and "files: `models/orders/orders.sql`" in log, log

    # The same extension in a plain session (no HYPERVISOR_WORKER, gate: block): its edits are not gated.
    with FakeGemini([call("write_file", {"file_path": "NOTES.md", "content": "notes\n"}), text("MAIN-DONE")]) as m2:
        plain = run_gemini("Take a note.", project, m2.url, extension_dir=REPO / "gemini", home=home, gemini=gemini)
        assert plain.returncode == 0, plain.describe()
        assert "error" not in function_responses(m2.requests[-1])[0]["response"]
    assert (project / "NOTES.md").read_text() == "notes\n"
