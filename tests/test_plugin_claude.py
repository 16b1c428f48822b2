"""The plugin in the real Claude Code (and the extension in the real Gemini CLI): validation, and a task claimed
and completed through the plugin's MCP tools by a scripted model. These fail, never skip, without the CLIs."""

from __future__ import annotations

import json
import subprocess

from claude_cli import hermetic_env, run_claude
from conftest import REPO, write_task
from fake_model import FakeModel, last_tool_result, last_tool_result_json, text, tool_names, tool_results, tool_use

from hypervisor.frontends.mcp_server import TOOL_NAMES
from hypervisor.tasks import taskfile

PREFIX = "mcp__plugin_hypervisor_task_manager__"


def test_claude_plugin_validate_strict_has_no_warnings(claude, tmp_path):
    env = hermetic_env("http://127.0.0.1:9", str(tmp_path))
    result = subprocess.run([claude, "plugin", "validate", str(REPO), "--strict"], capture_output=True, text=True,
                            env=env, timeout=120)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "⚠" not in output and "warning" not in output.lower(), output
    for provided in ("hypervisor:hypervisor", "hypervisor:pull", "hypervisor:worker", "task_manager"):
        assert provided in output, (provided, output)


def test_gemini_extensions_validate(gemini, tmp_path):
    env = hermetic_env("http://127.0.0.1:9", str(tmp_path), {"GEMINI_CLI_TRUST_WORKSPACE": "true"})
    result = subprocess.run([gemini, "extensions", "validate", str(REPO / "gemini")], capture_output=True, text=True, env=env,
                            timeout=180, cwd=tmp_path, stdin=subprocess.DEVNULL)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def project_with_tasks(tmp_path):
    project = tmp_path / "project"
    tasks = project / "tasks"
    write_task(tasks, "t1", status="active", priority=0, title="Write the release notes", keep="this")
    write_task(tasks, "t2", status="active", priority=1, title="Fix the footer typo")
    (project / ".hypervisor.yaml").write_text("tasks: tasks\n")
    return project, tasks


def test_a_scripted_model_claims_and_completes_a_task_through_the_plugin(claude, tmp_path, cpu_hog):
    project, tasks = project_with_tasks(tmp_path)
    script = [
        tool_use(PREFIX + "claim_next_task", {"caller": "main", "task_id": "t1"}),
        tool_use(PREFIX + "claim_next_task", {"caller": "intruder", "task_id": "t1"}),
        lambda request: tool_use(
            PREFIX + "complete_task",
            {
                "id": "t1",
                "claim_token": json.loads(tool_results(request)[-2]["text"])["claim_token"],
                "summary": "Wrote the release notes for 0.1.0",
                "commit": "abc1234",
            },
        ),  # fmt: skip
        lambda request: text("TASK COMPLETE: t1 " + last_tool_result(request)),
    ]
    with FakeModel(script) as model:
        result = run_claude("Do task t1 from the queue.", plugin_dir=REPO, cwd=project, model_url=model.url,
                            claude=claude)  # fmt: skip
    assert not result.is_error, result.describe()
    first = model.requests[0]
    assert {PREFIX + name for name in TOOL_NAMES} <= set(tool_names(first)), "alwaysLoad: tools in the first request"
    results = tool_results(model.requests[-1])
    claim = json.loads(results[0]["text"])
    assert claim["id"] == "t1" and claim["claim_token"] and not results[0]["is_error"]
    assert results[1]["is_error"] and "already claimed by main" in results[1]["text"]
    assert not results[2]["is_error"] and json.loads(results[2]["text"])["status"] == "done"
    doc = taskfile.read_doc(str(tasks / "t1.md"))
    assert doc.data["status"] == "done" and doc.data["commit"] == "abc1234" and doc.data["keep"] == "this"
    assert "## Worker log" in doc.body and "Wrote the release notes" in doc.body
    assert result.result.startswith("TASK COMPLETE: t1")


def test_pull_skill_runs_in_the_main_session(claude, tmp_path, cpu_hog):
    project, tasks = project_with_tasks(tmp_path)
    script = [
        tool_use(PREFIX + "claim_next_task", {"caller": "main", "task_id": "t2"}),
        lambda request: tool_use(
            PREFIX + "block_task",
            {
                "id": "t2",
                "claim_token": last_tool_result_json(request)["claim_token"],
                "reason": "the footer text is not in this repository",
            },
        ),  # fmt: skip
        text("TASK BLOCKED: t2: the footer text is not in this repository"),
    ]
    with FakeModel(script) as model:
        result = run_claude("/hypervisor:pull t2", plugin_dir=REPO, cwd=project, model_url=model.url, claude=claude)
    assert not result.is_error, result.describe()
    first_user = json.dumps(model.requests[0]["messages"][0])
    assert "Pull task t2" in first_user and "claim_next_task" in first_user
    doc = taskfile.read_doc(str(tasks / "t2.md"))
    assert doc.data["status"] == "blocked" and doc.data["blocked_reason"] == "the footer text is not in this repository"
