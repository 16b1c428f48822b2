"""The hooks: one normaliser for both CLIs' payloads, the claim-before-edit gate, the post-tool log, the light core."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, off_hook_path, write_task
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.claims import records as claims
from hypervisor.claims import workers
from hypervisor.claims.queue import TaskQueue
from hypervisor.core import lightjson
from hypervisor.core.config import read_flat
from hypervisor.core.rules import TASK_ID_PATTERN, is_task_id, scope_allows
from hypervisor.hooks.edge import run
from hypervisor.hooks.payload import parse
from hypervisor.tasks.store import TaskStore

HOOK = [sys.executable, "-S", str(REPO / "hooks/tool_hook.py")]
CLAUDE_MCP = "mcp__plugin_hypervisor_task_manager__"
WORKER = {"agent_id": "a0ab0affd383245c3", "agent_type": "hypervisor:worker"}


class Project:
    """A project folder with a task store, and the hook run in-process against it as one CLI session."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tasks = path / "tasks"
        write_task(self.tasks, "t1", status="active", title="Orders model", scope=["models/orders/**"])
        write_task(self.tasks, "t2", status="active", title="Anywhere")
        self.queue = TaskQueue(TaskStore(str(self.tasks)))
        self.state = str(self.tasks / ".hypervisor")
        self.env = {"CLAUDE_PROJECT_DIR": str(path)}

    def hook(self, payload: dict | bytes, env: dict | None = None) -> tuple[dict | None, str]:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        out, err = io.StringIO(), io.StringIO()
        assert run(io.BytesIO(raw), out, err, {**self.env, **(env or {})}) == 0
        text = out.getvalue()
        return (json.loads(text) if text else None), err.getvalue()

    def claude(self, event: str, tool: str, tool_input: dict, agent: dict | None = None, **extra) -> dict:
        payload = {"session_id": "sess-1", "transcript_path": "/dev/null", "cwd": str(self.path),
                   "permission_mode": "bypassPermissions", "hook_event_name": event, "tool_name": tool,
                   "tool_input": tool_input, "tool_use_id": "toolu_1", **(agent or {}), **extra}  # fmt: skip
        if tool.startswith("mcp__"):
            payload["mcp_server"] = {"name": "plugin:hypervisor:task_manager", "source": "plugin"}
        return payload

    def gemini(self, event: str, tool: str, tool_input: dict, **extra) -> dict:
        payload = {"session_id": "gem-1", "transcript_path": "/dev/null", "cwd": str(self.path),
                   "hook_event_name": event, "timestamp": "2026-11-22T12:03:59.561Z", "tool_name": tool,
                   "tool_input": tool_input, **extra}  # fmt: skip
        if tool.startswith("mcp_task_manager_"):
            payload["mcp_context"] = {"server_name": "task_manager", "tool_name": tool[len("mcp_task_manager_"):],
                                      "command": "python3", "args": []}  # fmt: skip
        return payload

    def write(self, rel: str, agent: dict | None = WORKER, event: str = "PreToolUse") -> dict:
        return self.claude(event, "Write", {"file_path": str(self.path / rel), "content": "x\n"}, agent)

    def claim_as_worker(self, task_id: str = "t1", agent: dict = WORKER) -> dict:
        """Claim through the queue (as the MCP server does), then the PostToolUse the CLI sends for it."""
        claimed = self.queue.claim_next("w1", task_id=task_id)
        post = self.claude("PostToolUse", CLAUDE_MCP + "claim_next_task", {"caller": "w1", "task_id": task_id},
                           agent, tool_response=json.dumps(claimed))  # fmt: skip
        assert self.hook(post) == (None, "")
        return claimed


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path / "project")


def denial(output: dict | None) -> str:
    assert output is not None, "expected a deny"
    assert output["decision"] == "block"
    specific = output["hookSpecificOutput"]
    assert specific["permissionDecision"] == "deny" and specific["permissionDecisionReason"] == output["reason"]
    return output["reason"]


# -- the normaliser ----------------------------------------------------------------------------------------------
def test_claude_and_gemini_payloads_normalise_to_the_same_call(project):
    claude = parse(json.dumps(project.claude("PreToolUse", "Edit", {
        "file_path": str(project.path / "models/orders/a.sql"), "old_string": "a", "new_string": "b",
        "replace_all": False}, WORKER)), {})  # fmt: skip
    gemini = parse(
        json.dumps(
            project.gemini(
                "BeforeTool",
                "replace",
                {"file_path": "models/orders/a.sql", "instruction": "x", "old_string": "a", "new_string": "b"},
            )
        ),
        {},
    )
    assert (claude.host, gemini.host) == ("claude", "gemini")
    assert claude.tool == gemini.tool == "Edit" and claude.is_edit and gemini.is_edit
    assert claude.paths == gemini.paths == (str(project.path / "models/orders/a.sql"),)
    assert (claude.worker.agent_id, claude.worker.agent_type) == (WORKER["agent_id"], "hypervisor:worker")
    assert gemini.worker.agent_id == "" and gemini.worker.session_id == "gem-1"
    write = parse(json.dumps(project.gemini("BeforeTool", "write_file", {"file_path": "../x", "content": ""})), {})
    assert write.tool == "Write" and write.paths == (str(project.path.parent / "x"),)
    notebook = parse(json.dumps(project.claude("PreToolUse", "NotebookEdit", {"notebook_path": "/n.ipynb"})), {})
    assert notebook.is_edit and notebook.paths == ("/n.ipynb",)


@pytest.mark.parametrize("payload", [
    {"hook_event_name": "PostToolUse", "tool_name": CLAUDE_MCP + "complete_task",
     "mcp_server": {"name": "plugin:hypervisor:task_manager", "source": "plugin"}},
    {"hook_event_name": "PostToolUse", "tool_name": CLAUDE_MCP + "complete_task"},
    {"hook_event_name": "AfterTool", "tool_name": "mcp_task_manager_complete_task",
     "mcp_context": {"server_name": "task_manager", "tool_name": "complete_task"}},
    {"hook_event_name": "AfterTool", "tool_name": "mcp_task_manager_complete_task"},
], ids=["claude", "claude-no-server-field", "gemini", "gemini-no-context"])  # fmt: skip
def test_mcp_names_in_both_spellings(payload):
    call = parse(json.dumps({"cwd": "/", "tool_input": {}, **payload}), {})
    assert call.task_tool == "complete_task" and not call.is_edit


def test_other_servers_tools_are_not_ours():
    call = parse(json.dumps({"cwd": "/", "hook_event_name": "PreToolUse", "tool_name": "mcp__github__complete_task",
                             "tool_input": {}}), {})  # fmt: skip
    assert call.server == "github" and call.task_tool is None


def test_mcp_results_are_read_from_both_clis_shapes():
    claimed = {"id": "t1", "claim_token": "abc"}
    claude = parse(json.dumps({"cwd": "/", "hook_event_name": "PostToolUse", "tool_name": CLAUDE_MCP + "claim_next_task",
                               "tool_input": {}, "tool_response": json.dumps(claimed)}), {})  # fmt: skip
    gemini = parse(json.dumps({"cwd": "/", "hook_event_name": "AfterTool", "tool_name": "mcp_task_manager_claim_next_task",
                               "tool_input": {}, "tool_response": {"llmContent": [
                                   {"text": "<untrusted_context>\n" + json.dumps(claimed) + "\n</untrusted_context>"}],
                                   "returnDisplay": "x"}}), {})  # fmt: skip
    assert claude.response_object() == gemini.response_object() == claimed


# -- the gate ----------------------------------------------------------------------------------------------------
def test_the_main_session_is_never_gated(project):
    assert project.hook(project.write("anything.txt", agent=None)) == (None, "")


def test_a_worker_without_a_claim_is_denied_with_the_claim_tool_of_its_cli(project):
    reason = denial(project.hook(project.write("models/orders/a.sql"))[0])
    assert "holds no claim" in reason and CLAUDE_MCP + "claim_next_task" in reason and "models/orders/a.sql" in reason
    gemini = project.gemini("BeforeTool", "write_file", {"file_path": "models/orders/a.sql", "content": "x"})
    reason = denial(project.hook(gemini, {"HYPERVISOR_WORKER": "1", "GEMINI_PROJECT_DIR": str(project.path)})[0])
    assert "mcp_task_manager_claim_next_task" in reason and "mcp__" not in reason


def test_after_claiming_a_worker_edits_inside_scope_only(project):
    project.claim_as_worker("t1")
    assert project.hook(project.write("models/orders/a.sql")) == (None, "")
    reason = denial(project.hook(project.write("models/customers/a.sql"))[0])
    assert "outside the scope of task t1 (models/orders/**)" in reason
    assert f"file it with {CLAUDE_MCP}create_task for another worker" in reason
    reason = denial(project.hook(project.write("../elsewhere/models/orders/a.sql"))[0])
    assert "outside the scope" in reason
    reason = denial(project.hook(project.write("tasks/.hypervisor/claims/t1.json"))[0])
    assert "hypervisor's own state" in reason


def test_a_task_without_scope_lets_its_holder_edit_anything_but_the_state(project):
    project.claim_as_worker("t2")
    assert project.hook(project.write("src/anything.py")) == (None, "")
    assert "own state" in denial(project.hook(project.write("tasks/.hypervisor/events.jsonl"))[0])


def test_another_worker_of_the_same_session_is_not_covered_by_that_claim(project):
    project.claim_as_worker("t1")
    other = {"agent_id": "b1", "agent_type": "hypervisor:worker"}
    assert "holds no claim" in denial(project.hook(project.write("models/orders/a.sql", agent=other))[0])


def test_gate_modes_from_the_project_settings(project):
    settings_file = project.path / ".hypervisor.yaml"
    settings_file.write_text("gate: off\n")
    assert project.hook(project.write("x.txt")) == (None, "")
    settings_file.write_text("gate: warn  # tell, do not stop\n")
    output, err = project.hook(project.write("x.txt"))
    assert "holds no claim" in output["hookSpecificOutput"]["additionalContext"] and "holds no claim" in err
    assert "decision" not in output
    settings_file.write_text("gate: all\n")
    assert "holds no claim" in denial(project.hook(project.write("x.txt", agent=None))[0])
    settings_file.write_text("gate: block\n")
    assert project.hook(project.write("x.txt", agent=None)) == (None, "")


def test_settings_pick_the_task_root(project, tmp_path):
    elsewhere = tmp_path / "queue"
    write_task(elsewhere, "e1", status="active")
    claimed = TaskQueue(TaskStore(str(elsewhere))).claim_next("sup", task_id="e1")
    env = {"HYPERVISOR_WORKER": "1", "HYPERVISOR_TASK_ID": "e1", "HYPERVISOR_CLAIM_TOKEN": claimed["claim_token"]}
    assert "claim on task e1 has ended" in denial(project.hook(project.write("x.txt", agent=None), env)[0])
    (project.path / ".hypervisor.yaml").write_text(f"tasks: {elsewhere}\n")
    assert project.hook(project.write("x.txt", agent=None), env) == (None, "")
    overridden = {**env, "HYPERVISOR_TASKS": str(project.tasks)}
    assert "claim on task e1 has ended" in denial(project.hook(project.write("x.txt", agent=None), overridden)[0])


def test_a_supervisor_claim_in_the_environment_opens_the_gate(project):
    claimed = project.queue.claim_next("supervisor", task_id="t1")
    env = {"HYPERVISOR_WORKER": "1", "HYPERVISOR_TASK_ID": "t1", "HYPERVISOR_CLAIM_TOKEN": claimed["claim_token"]}
    assert project.hook(project.write("models/orders/a.sql", agent=None), env) == (None, "")
    assert "outside the scope" in denial(project.hook(project.write("README.md", agent=None), env)[0])
    wrong = {**env, "HYPERVISOR_CLAIM_TOKEN": "0" * 32}
    assert "does not match" in denial(project.hook(project.write("models/orders/a.sql", agent=None), wrong)[0])


def test_a_worker_whose_lease_was_taken_over_is_told_the_claim_is_lost(project):
    claimed = project.claim_as_worker("t1")
    record = claims.read_claim(project.state, "t1")
    record.lease_expires_at = time.time() - 240
    claims.write_claim(project.state, record)
    project.queue.claim_next("w3", task_id="t1")
    reason = denial(project.hook(project.write("models/orders/a.sql"))[0])
    assert reason.startswith("hypervisor: claim lost: lease expired 4 min ago, now held by w3"), reason
    assert claimed["claim_token"] not in reason


def test_after_complete_the_worker_is_gated_again(project):
    claimed = project.claim_as_worker("t1")
    project.queue.complete("t1", token=claimed["claim_token"], summary="done")
    reason = denial(project.hook(project.write("models/orders/a.sql"))[0])
    assert reason.startswith("hypervisor: claim lost: your claim on task t1 has ended")


# -- the post-tool log ---------------------------------------------------------------------------------------------
def test_every_tool_call_of_the_holder_renews_its_lease_and_is_journaled(project):
    claimed = project.claim_as_worker("t1")
    before = claims.read_claim(project.state, "t1")
    before.lease_expires_at -= 600
    claims.write_claim(project.state, before)
    project.hook(project.write("models/orders/a.sql", event="PostToolUse") | {"tool_response": {"type": "create"}})
    project.hook(project.claude("PostToolUse", "Bash", {"command": "make test"}, WORKER, tool_response={}))
    project.hook(project.claude("PostToolUseFailure", "Write", {"file_path": str(project.path / "models/orders/b.sql"),
                                                                "content": ""}, WORKER, error="disk full"))  # fmt: skip
    after = claims.read_claim(project.state, "t1")
    assert after.lease_expires_at > before.lease_expires_at + 590
    assert after.worker == "hypervisor:worker a0ab0aff"
    files, calls = workers.journal_summary(project.state, "t1", claimed["claim_token"])
    assert files == ["models/orders/a.sql"] and calls == 4  # the claim, the write, the shell, the failed write


def test_complete_writes_the_worker_log_with_the_journaled_files_and_unbinds(project):
    claimed = project.claim_as_worker("t1")
    project.hook(project.write("models/orders/a.sql", event="PostToolUse") | {"tool_response": {}})
    project.hook(project.write("models/orders/b.sql", event="PostToolUse") | {"tool_response": {}})
    result = project.queue.complete("t1", token=claimed["claim_token"], summary="Added the orders model",
                                    commit="abc1234")  # fmt: skip
    post = project.claude("PostToolUse", CLAUDE_MCP + "complete_task", {"id": "t1"}, WORKER,
                          tool_response=json.dumps(result))  # fmt: skip
    assert project.hook(post) == (None, "")
    body = (project.tasks / "t1.md").read_text()
    log = body.split("## Worker log", 1)[1]
    assert "w1 (hypervisor:worker a0ab0aff) · **done**" in log and "4 tool calls" in log and "commit `abc1234`" in log
    assert "Added the orders model" in log and "`models/orders/a.sql`, `models/orders/b.sql`" in log
    assert workers.bound(project.state, parse(json.dumps(post), {}).worker) is None
    assert not list(Path(project.state, "journal").iterdir())


def test_gemini_claims_bind_the_session_from_the_wrapped_mcp_result(project):
    env = {"HYPERVISOR_WORKER": "1", "GEMINI_PROJECT_DIR": str(project.path)}
    claimed = project.queue.claim_next("gemini", task_id="t1")
    wrapped = {"llmContent": [{"text": f"<untrusted_context>\n{json.dumps(claimed)}\n</untrusted_context>"}],
               "returnDisplay": "ok"}  # fmt: skip
    project.hook(project.gemini("AfterTool", "mcp_task_manager_claim_next_task", {"caller": "gemini"},
                                tool_response=wrapped), env)  # fmt: skip
    assert project.hook(project.gemini("BeforeTool", "write_file", {"file_path": "models/orders/x.sql",
                                                                    "content": "x"}), env) == (None, "")  # fmt: skip
    reason = denial(project.hook(project.gemini("BeforeTool", "replace", {"file_path": "docs/x.md",
                    "instruction": "i", "old_string": "a", "new_string": "b"}), env)[0])  # fmt: skip
    assert "outside the scope" in reason and "file it with mcp_task_manager_create_task" in reason


def test_a_failed_claim_binds_nothing(project):
    project.queue.claim_next("w9", task_id="t1")
    post = project.claude("PostToolUseFailure", CLAUDE_MCP + "claim_next_task", {"caller": "w1", "task_id": "t1"},
                          WORKER, error="task t1 is already claimed by w9")  # fmt: skip
    assert project.hook(post) == (None, "")
    assert "holds no claim" in denial(project.hook(project.write("models/orders/a.sql"))[0])


def test_renewals_racing_a_completion_never_bring_the_claim_back(project):
    """Real processes: 16 post hooks of the holder start while the holder completes; the claim stays ended."""
    claimed = project.claim_as_worker("t1")
    payload = json.dumps(project.claude("PostToolUse", "Bash", {"command": "true"}, WORKER, tool_response={}))
    env = {**os.environ, **project.env}
    procs = [subprocess.Popen(HOOK, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                              cwd=project.path) for _ in range(16)]  # fmt: skip
    for index, proc in enumerate(procs):
        proc.stdin.write(payload.encode())
        proc.stdin.close()
        if index == 8:
            project.queue.complete("t1", token=claimed["claim_token"], summary="done while renewing")
    for proc in procs:
        assert proc.wait(timeout=60) == 0
        assert proc.stdout.read() == b"" and b"Traceback" not in proc.stderr.read()
    assert claims.read_claim(project.state, "t1") is None
    assert "status: done" in (project.tasks / "t1.md").read_text()


# -- Agent prompts that pull a task ---------------------------------------------------------------------------------
def agent_input(prompt: object, subagent_type: str = "hypervisor:worker") -> dict:
    return {"description": "pull a task", "prompt": prompt, "subagent_type": subagent_type, "run_in_background": True}


@pytest.mark.parametrize("prompt, subagent_type, task_id, extra", [
    ("/hypervisor:pull t2", "hypervisor:worker", "t2", ""),
    ("/pull t2", "hypervisor:worker", "t2", ""),
    ("/hypervisor:pull t2", "general-purpose", "t2", ""),
    ("  /hypervisor:pull\tt1   and run the tests first.\nThen stop.\n", "hypervisor:worker", "t1",
     "and run the tests first.\nThen stop."),
    ("/pull " + "a" * 128, "hypervisor:worker", "a" * 128, ""),
], ids=["hypervisor-pull", "pull", "general-purpose", "more-text", "longest-id"])  # fmt: skip
def test_an_agent_prompt_pulling_a_task_is_spelled_out_for_the_worker(project, prompt, subagent_type, task_id, extra):
    original = agent_input(prompt, subagent_type)
    output, err = project.hook(project.claude("PreToolUse", "Agent", original))
    assert err == "" and set(output) == {"hookSpecificOutput"}, (output, err)
    specific = output["hookSpecificOutput"]
    assert specific["hookEventName"] == "PreToolUse" and specific["permissionDecision"] == "allow"
    updated = specific["updatedInput"]
    assert updated == {**original, "prompt": updated["prompt"]}, "the whole tool_input, only its prompt rewritten"
    told = updated["prompt"]
    assert told.startswith(f"Your task is {task_id} ")
    assert f'{CLAUDE_MCP}claim_next_task with task_id "{task_id}"' in told
    assert "never claim another" in told and "ToolSearch" in told
    assert told.endswith("\n\n" + extra) if extra else told.endswith("first.")
    assert project.hook(project.claude("PreToolUse", "Agent", updated)) == (None, ""), "a second pass changes nothing"
    nested = project.claude("PreToolUse", "Agent", original, WORKER)
    assert project.hook(nested)[0] == output, "a worker's own Agent call is spelled out the same way"


@pytest.mark.parametrize("prompt, subagent_type", [
    ("Do task t1.", "hypervisor:worker"), ("/pull t1", "general-purpose"), ("/pull t1", ""),
    ("/hypervisor:pull", "hypervisor:worker"), ("/hypervisor:pull   ", "hypervisor:worker"),
    ("/hypervisor:pullt1", "hypervisor:worker"), ("/hypervisor:pull ../../etc", "hypervisor:worker"),
    ("/hypervisor:pull a/b", "hypervisor:worker"), ("/hypervisor:pull t1,", "hypervisor:worker"),
    ("/hypervisor:pull " + "a" * 129, "hypervisor:worker"), ("/hypervisor:pull .hidden", "hypervisor:worker"),
    ("please /hypervisor:pull t1", "hypervisor:worker"), ("/hypervisor:pulls t1", "hypervisor:worker"),
    (["/hypervisor:pull t1"], "hypervisor:worker"), (None, "hypervisor:worker"),
], ids=["plain", "pull-for-another-agent", "pull-no-type", "no-id", "blank-id", "glued", "dotdot", "slash",
        "comma", "too-long", "dot-first", "mentioned", "other-command", "list", "null"])  # fmt: skip
def test_agent_prompts_that_pull_no_valid_task_are_left_alone(project, prompt, subagent_type):
    assert project.hook(project.claude("PreToolUse", "Agent", agent_input(prompt, subagent_type))) == (None, "")


def test_the_real_hook_spells_out_a_pull_prompt_even_outside_a_hypervisor_project(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    payload = {"session_id": "s", "cwd": str(plain), "hook_event_name": "PreToolUse", "tool_name": "Agent",
               "tool_input": agent_input("/hypervisor:pull p-2"), "tool_use_id": "toolu_1"}  # fmt: skip
    result = subprocess.run(HOOK, input=json.dumps(payload), capture_output=True, text=True, timeout=60,
                            env={**hook_env(), "CLAUDE_PROJECT_DIR": str(plain)}, cwd=plain)  # fmt: skip
    assert result.returncode == 0 and result.stderr == "" and result.stdout.count("\n") == 1, result
    told = json.loads(result.stdout)["hookSpecificOutput"]["updatedInput"]["prompt"]
    assert told.startswith("Your task is p-2 ") and not list(plain.iterdir())


# -- a project that does not use hypervisor -------------------------------------------------------------------------
def hook_env() -> dict:
    """The environment of a real hook process, without any HYPERVISOR_* setting of the process running the tests."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("HYPERVISOR_", "CLAUDE_", "GEMINI_"))}


def tree(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_in_a_project_without_hypervisor_the_hooks_say_and_make_nothing(tmp_path):
    """No task root, no .hypervisor.yaml, no HYPERVISOR_TASKS: every payload of both CLIs, from the main session
    and from a `hypervisor:worker`, gets exit 0, an empty stdout and stderr, and leaves the project as it was."""
    plain = tmp_path / "plain"
    (plain / "src").mkdir(parents=True)
    (plain / "src" / "app.py").write_text("print('hi')\n")
    target, claimed = str(plain / "src" / "app.py"), json.dumps({"id": "t1", "claim_token": "a" * 32})
    mcp = {"mcp_server": {"name": "plugin:hypervisor:task_manager", "source": "plugin"}}
    gemini_mcp = {"mcp_context": {"server_name": "task_manager", "tool_name": "claim_next_task"}}
    claude = [
        ("PreToolUse", "Write", {"file_path": target, "content": "x"}, {}),
        ("PreToolUse", "Edit", {"file_path": target, "old_string": "hi", "new_string": "yo"}, {}),
        ("PostToolUse", "Write", {"file_path": target, "content": "x"}, {"tool_response": {"type": "update"}}),
        ("PostToolUse", "Bash", {"command": "ls"}, {"tool_response": {"stdout": ""}}),
        ("PostToolUseFailure", "Bash", {"command": "false"}, {"error": "Exit code 1"}),
        ("PostToolUse", CLAUDE_MCP + "claim_next_task", {"caller": "w1"}, {"tool_response": claimed, **mcp}),
        ("PreToolUse", "Agent", agent_input("Do the work."), {}),
        ("PostToolUse", "Agent", agent_input("Do the work."), {"tool_response": {"status": "completed"}}),
    ]  # fmt: skip
    gemini = [
        ("BeforeTool", "write_file", {"file_path": "src/app.py", "content": "x"}, {}),
        ("BeforeTool", "replace", {"file_path": "src/app.py", "instruction": "i", "old_string": "hi",
                                   "new_string": "yo"}, {}),
        ("AfterTool", "write_file", {"file_path": "src/app.py", "content": "x"},
         {"tool_response": {"llmContent": "ok"}}),
        ("AfterTool", "mcp_task_manager_claim_next_task", {"caller": "g"},
         {"tool_response": {"llmContent": [{"text": claimed}]}, **gemini_mcp}),
        ("AfterTool", "run_shell_command", {"command": "ls"}, {"tool_response": {"llmContent": "", "error": None}}),
    ]  # fmt: skip
    before = tree(plain)
    answers = []
    for host, events in (("claude", claude), ("gemini", gemini)):
        env = {**hook_env(), "GEMINI_PROJECT_DIR" if host == "gemini" else "CLAUDE_PROJECT_DIR": str(plain)}
        for who in ({}, WORKER):
            for event, tool, tool_input, extra in events:
                payload = {
                    "session_id": "s1",
                    "transcript_path": "/dev/null",
                    "cwd": str(plain),
                    "hook_event_name": event,
                    "tool_name": tool,
                    "tool_input": tool_input,
                    **who,
                    **extra,
                }
                result = subprocess.run(HOOK, input=json.dumps(payload), capture_output=True, text=True, env=env,
                                        cwd=plain, timeout=60)  # fmt: skip
                answers.append((host, event, tool, bool(who), result.returncode, result.stdout, result.stderr))
    noisy = [answer for answer in answers if answer[4:] != (0, "", "")]
    assert not noisy, noisy
    assert len(answers) == 26 and tree(plain) == before, "the hooks created or changed files in the project"


# -- the hook process ----------------------------------------------------------------------------------------------
def test_the_real_hook_script_denies_in_the_form_both_clis_honour(project):
    env = {**os.environ, **project.env}
    result = subprocess.run(HOOK, input=json.dumps(project.write("models/orders/a.sql")), capture_output=True,
                            text=True, env=env, cwd=project.path, timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stderr == ""
    assert "holds no claim" in denial(json.loads(result.stdout))
    assert result.stdout.count("\n") == 1


def test_unreadable_input_is_let_through_with_a_reason_on_stderr(project):
    output, err = project.hook(b'{"hook_event_name": "PreToolUse", "tool_name": "Write", "tool_input": []}')
    assert output is None and err.startswith("hypervisor hook: tool_input is list, not an object;")
    (project.path / ".hypervisor.yaml").write_text("gate: maybe\n")
    output, err = project.hook(project.write("x.txt"))
    assert output is None and "gate: 'maybe' is not one of off, warn, block, all" in err


BANNED = ("click", "jsonschema", "pydantic", "rich", "mcp", "yaml")


@pytest.mark.parametrize("flags", [["-S"], []], ids=["as-hooks.json-runs-it", "with-site-packages"])
def test_the_hook_modules_import_only_the_light_core(flags, project):
    """Even with every dependency importable, the hook path loads none of them (nor the task-file parser)."""
    (project.path / ".hypervisor.yaml").write_text("tasks: tasks\ngate: block\nlease: 30m\n")
    code = (
        "import io, json, os, sys; sys.path.insert(0, sys.argv[1]);"
        "from hypervisor.hooks.edge import run;"
        "[run(io.BytesIO(p.encode()), io.StringIO(), io.StringIO(), os.environ) for p in json.loads(sys.argv[2])];"
        "print(json.dumps(sorted(sys.modules)))"
    )
    claimed = project.queue.claim_next("w1", task_id="t1")
    payloads = [
        project.write("models/orders/a.sql"),
        project.claude("PostToolUse", CLAUDE_MCP + "claim_next_task", {"caller": "w1"}, WORKER,
                       tool_response=json.dumps(claimed)),
        project.write("models/orders/a.sql", event="PostToolUse") | {"tool_response": {}},
        project.write("README.md"),
    ]  # fmt: skip
    result = subprocess.run([sys.executable, *flags, "-c", code, str(REPO / "src"),
                             json.dumps([json.dumps(p) for p in payloads])], capture_output=True, text=True,
                            env={**os.environ, **project.env}, cwd=project.path, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout)
    loaded = sorted(m for m in modules if m.split(".")[0] in BANNED)
    assert not loaded, f"the hook imported {loaded}"
    assert not off_hook_path(modules), off_hook_path(modules)
    assert workers.journal_summary(project.state, "t1", claimed["claim_token"])[1] == 2, "the calls did run"


def imported_by(result: subprocess.CompletedProcess) -> set[str]:
    """The modules a `python -X importtime` run imported, from what it wrote on stderr."""
    return {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


def test_the_real_hook_script_loads_only_the_hook_path_for_every_kind_of_call(project):
    """hooks/tool_hook.py as hooks.json starts it, one process a call: each kind of call loads nothing of the
    package outside the hook path (conftest.on_hook_path) and none of the dependencies."""
    (project.path / ".hypervisor.yaml").write_text("tasks: tasks\ngate: block\nlease: 30m\n")
    claimed = project.queue.claim_next("w1", task_id="t1")
    calls = [
        ("post-claim", project.claude("PostToolUse", CLAUDE_MCP + "claim_next_task", {"caller": "w1"}, WORKER,
                                      tool_response=json.dumps(claimed)), lambda out: out is None),
        ("pre-allowed", project.write("models/orders/a.sql"), lambda out: out is None),
        ("pre-denied", project.write("docs/a.md"), lambda out: "outside the scope" in denial(out)),
        ("post-write", project.write("models/orders/a.sql", event="PostToolUse") | {"tool_response": {}},
         lambda out: out is None),
        ("agent-rewrite", project.claude("PreToolUse", "Agent", agent_input("/hypervisor:pull t2")),
         lambda out: "updatedInput" in out["hookSpecificOutput"]),
    ]  # fmt: skip
    for kind, payload, expected in calls:
        result = subprocess.run([*HOOK[:2], "-X", "importtime", *HOOK[2:]], input=json.dumps(payload),
                                capture_output=True, text=True, env={**os.environ, **project.env},
                                cwd=project.path, timeout=60)  # fmt: skip
        assert result.returncode == 0, (kind, result.stderr)
        assert expected(json.loads(result.stdout) if result.stdout.strip() else None), (kind, result.stdout)
        modules = imported_by(result)
        assert "hypervisor.hooks.edge" in modules, (kind, "the hook did not load the package", result.stderr)
        assert not off_hook_path(modules), (kind, off_hook_path(modules))
        assert not {m for m in modules if m.split(".")[0] in BANNED}, (kind, sorted(modules))
    assert workers.journal_summary(project.state, "t1", claimed["claim_token"])[1] == 2, "the calls did run"


def test_the_gate_path_loads_no_slow_standard_modules(project):
    """What keeps a gate call near a bare interpreter's start (bench/hooks.py): no re, json, typing, datetime."""
    (project.path / ".hypervisor.yaml").write_text("tasks: tasks\ngate: block\nlease: 30m\n")
    project.claim_as_worker("t1")
    code = (
        "import io, os, sys; sys.path.insert(0, sys.argv[1]); from hypervisor.hooks.edge import run;"
        "out = io.StringIO(); run(sys.stdin.buffer, out, sys.stderr, os.environ); print(out.getvalue());"
        "print(' '.join(sorted(sys.modules)))"
    )
    for payload, denied in ((project.write("models/orders/a.sql"), False), (project.write("docs/a.md"), True)):
        result = subprocess.run([sys.executable, "-S", "-c", code, str(REPO / "src")], input=json.dumps(payload),
                                capture_output=True, text=True, env={**os.environ, **project.env}, timeout=60)  # fmt: skip
        verdict, modules = result.stdout.rstrip("\n").rsplit("\n", 1)
        assert ("outside the scope" in verdict) == denied, result.stdout + result.stderr
        slow = {"re", "json", "typing", "datetime", "hashlib", "tempfile", "dataclasses"} & set(modules.split())
        assert not slow, f"the gate imported {sorted(slow)}"


# -- the flat settings reader agrees with PyYAML ---------------------------------------------------------------------
VALUES = st.one_of(
    st.sampled_from(["tasks", "off", "block", "all", "30m", "1h", "0", "7", "010", "1.5", "yes", "No", "null", "~",
                     "redis://h:6379/0", "'quoted'", '"dq"', '"a\\tb"', "a: b", "x:", ".inf", "0x1f", "1_000", "1:30",
                     "", "- a", "[a]", "{a: 1}", "!!str 3", "&a x", "*a", "|", ">", "'it''s'", "a # c", "a#b",
                     "2026-01-01", "1e3", "+1", "-1", "@x", "`x`", "%x", "é", "tâches/à faire"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
)  # fmt: skip
KEYS = st.sampled_from(["tasks", "gate", "lease", "max_attempts", "backend", "x_y", "dup", "é", "a b", "-a"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(KEYS, st.sampled_from([": ", ":", ":\t", ":  "]), VALUES), max_size=5),
       st.sampled_from(["\n", "\r\n"]), st.booleans())  # fmt: skip
def test_the_flat_settings_reader_never_disagrees_with_pyyaml(lines, newline, comment):
    text = ("# settings" + newline if comment else "") + "".join(f"{k}{sep}{v}{newline}" for k, sep, v in lines)
    flat = read_flat(text)
    try:
        expected = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        assert flat is None, text
        return
    assert flat is None or flat == expected, text


# -- the re-free rules the hooks use agree with their regular-expression definitions ----------------------------------
@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(alphabet="aZ09._-/é \n", max_size=8), st.text(max_size=130), st.from_regex(TASK_ID_PATTERN)))
def test_is_task_id_is_the_pattern_without_dots_dots(value):
    assert is_task_id(value) == bool(re.fullmatch(TASK_ID_PATTERN.rstrip("$").lstrip("^"), value) and ".." not in value)


def _glob_oracle(glob: str, path: str) -> bool:
    """The scope rule written with regular expressions, as a reference for the hooks' re-free matcher."""
    if not any(char in glob for char in "*?["):
        return path == glob.rstrip("/") or path.startswith(glob.rstrip("/") + "/")
    parts = glob.split("/")
    regex = ""
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            regex += ".+" if last else "(?:.*/)?"
            continue
        regex += "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part)
        regex += "" if last else "/"
    return re.fullmatch(regex, path, re.DOTALL) is not None


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "ab", "*", "?", "a*", "*b", "**", "a?b"]), min_size=1, max_size=4),
       st.lists(st.sampled_from(["a", "b", "ab", "aab", "ba", "x.py"]), min_size=1, max_size=5))  # fmt: skip
def test_scope_globs_match_like_their_regular_expressions(glob_parts, path_parts):
    glob, path = "/".join(glob_parts), "/".join(path_parts)
    assert scope_allows(path, [glob]) == _glob_oracle(glob, path), (glob, path)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=20))  # fmt: skip
def test_lightjson_reads_and_writes_what_json_does(value):
    text = json.dumps(value)
    assert lightjson.dumps(value) == text
    assert lightjson.loads(text) == json.loads(text) and lightjson.loads(text.encode()) == json.loads(text)
    with pytest.raises(ValueError):
        lightjson.loads(text + " x")
