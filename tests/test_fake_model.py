"""The scripted fake model drives the real, pinned Claude Code binary: plugin MCP tools (deferred and alwaysLoad)
and a plugin subagent running in its own lane.

These tests need npm (the pinned CLI is installed into build/npm/ on first use). If it can't be installed they
FAIL rather than skip: CI must run them.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from claude_cli import run_claude
from fake_model import (
    FakeModel,
    Lane,
    assistant_turns,
    error,
    first_user_text,
    hang,
    last_tool_result,
    system_text,
    text,
    tool_names,
    tool_results,
    tool_use,
    tool_uses,
)

PLUGIN = "tplug"
ECHO = f"mcp__plugin_{PLUGIN}_tasks__echo"

MCP_SERVER = '''\
"""A one-tool MCP server for the tests: echo(text) logs each call to $ECHO_LOG."""
import json
import os

from mcp.server.mcpserver import MCPServer

srv = MCPServer("tasks")


@srv.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    with open(os.environ["ECHO_LOG"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"tool": "echo", "text": text}) + "\\n")
    return f"echo: {text}"


srv.run("stdio")
'''

WORKER_AGENT = f"""\
---
name: worker
description: A worker agent that echoes things
tools: {ECHO}, Read
model: inherit
---
WORKER-AGENT-BODY You are a worker. Do what the task says.
"""


def make_plugin(root: Path, *, always_load: bool = False, agent: bool = False) -> tuple[Path, Path]:
    """A throwaway plugin `tplug` with MCP server `tasks` (tool `echo`); returns (plugin dir, echo log)."""
    plugin = root / "plugin"
    (plugin / ".claude-plugin").mkdir(parents=True)
    (plugin / "bin").mkdir()
    manifest = {"name": PLUGIN, "version": "0.0.1", "description": "Throwaway test plugin",
                "author": {"name": "Tests"}}  # fmt: skip
    (plugin / ".claude-plugin" / "plugin.json").write_text(json.dumps(manifest, indent=2))
    (plugin / "bin" / "tasks_server.py").write_text(MCP_SERVER)
    log = root / "echo.log"
    server = {"command": sys.executable, "args": ["${CLAUDE_PLUGIN_ROOT}/bin/tasks_server.py"],
              "env": {"ECHO_LOG": str(log)}}  # fmt: skip
    if always_load:
        server["alwaysLoad"] = True
    (plugin / ".mcp.json").write_text(json.dumps({"mcpServers": {"tasks": server}}, indent=2))
    if agent:
        (plugin / "agents").mkdir()
        (plugin / "agents" / "worker.md").write_text(WORKER_AGENT)
    return plugin, log


def echo_calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def drive(tmp_path: Path, claude: str, script, prompt: str, **plugin_options):
    plugin, log = make_plugin(tmp_path, **plugin_options)
    project = tmp_path / "project"
    project.mkdir()
    with FakeModel(script, log_path=str(tmp_path / "requests.jsonl")) as server:
        result = run_claude(prompt, plugin_dir=plugin, cwd=project, model_url=server.url, claude=claude,
                            home=tmp_path / "home", timeout=120)  # fmt: skip
    assert result.returncode == 0, result.describe()
    assert not result.is_error, result.describe()
    assert not server.problems, (server.problems, result.describe())
    return result, server, log


def test_deferred_mcp_tool_via_toolsearch(tmp_path: Path, claude: str) -> None:
    script = [
        tool_use("ToolSearch", {"query": f"select:{ECHO}", "max_results": 5}),
        tool_use(ECHO, {"text": "hello-a"}),
        lambda req: text("ANSWER-A " + last_tool_result(req)),
    ]
    result, server, log = drive(tmp_path, claude, script, "please echo hello-a")

    assert echo_calls(log) == [{"tool": "echo", "text": "hello-a"}]
    main = server.lane_requests("main")
    assert [assistant_turns(req) for req in main] == [0, 1, 2]
    # Deferred: not callable at first, only announced by name; ToolSearch loads its schema.
    assert ECHO not in tool_names(main[0])
    assert "ToolSearch" in tool_names(main[0])
    assert ECHO in json.dumps(main[0]["messages"]) + system_text(main[0])
    assert ECHO in tool_names(main[1])
    echo_result = tool_results(main[2])[-1]
    assert not echo_result["is_error"]
    assert "echo: hello-a" in echo_result["text"]
    assert result.result == "ANSWER-A " + echo_result["text"]


def test_always_load_mcp_tool_is_in_first_request(tmp_path: Path, claude: str) -> None:
    script = [tool_use(ECHO, {"text": "hello-b"}), text("ANSWER-B")]
    result, server, log = drive(tmp_path, claude, script, "please echo hello-b", always_load=True)

    assert echo_calls(log) == [{"tool": "echo", "text": "hello-b"}]
    first = server.lane_requests("main")[0]
    tool = next(tool for tool in first["tools"] if tool["name"] == ECHO)
    assert "defer_loading" not in tool
    assert tool["input_schema"]["properties"]["text"]["type"] == "string"
    assert "ToolSearch" not in [call["name"] for req in server.requests for call in _tool_uses(req)]
    assert "echo: hello-b" in last_tool_result(server.lane_requests("main")[-1])
    assert result.result == "ANSWER-B"


def test_subagent_runs_in_its_own_lane(tmp_path: Path, claude: str) -> None:
    task = "TASK-ID: w1"
    script = [
        Lane("main", [
            tool_use("Agent", {"description": "worker w1", "prompt": f"{task}\nEcho from-worker.",
                               "subagent_type": f"{PLUGIN}:worker", "run_in_background": False}),
            lambda req: text("MAIN-DONE " + last_tool_result(req)),
        ]),
        Lane("worker", [tool_use(ECHO, {"text": "from-worker"}), text("WORKER-DONE")], match=task),
    ]  # fmt: skip
    result, server, log = drive(tmp_path, claude, script, "start one worker", agent=True)

    assert echo_calls(log) == [{"tool": "echo", "text": "from-worker"}]
    assert server.played("main") == 2
    assert server.played("worker") == 2
    worker = server.lane_requests("worker")
    assert task in first_user_text(worker[0])
    assert "WORKER-AGENT-BODY" in system_text(worker[0])
    assert "echo: from-worker" in last_tool_result(worker[-1])
    assert "Agent" not in tool_names(worker[0])  # a plugin agent only gets its `tools`
    # The worker's final text came back to the main lane as the Agent tool's result.
    assert "WORKER-DONE" in last_tool_result(server.lane_requests("main")[-1])
    assert result.result.startswith("MAIN-DONE ") and "WORKER-DONE" in result.result


def test_parallel_subagents_interleave_in_their_lanes(tmp_path: Path, claude: str) -> None:
    def spawn(worker: str):
        return tool_use("Agent", {"description": f"worker {worker}", "prompt": f"TASK-ID: {worker}\nEcho {worker}.",
                                  "subagent_type": f"{PLUGIN}:worker", "run_in_background": False})  # fmt: skip

    def worker_lane(worker: str) -> Lane:
        # The worker echoes its name, then answers with what the tool returned.
        steps = [tool_use(ECHO, {"text": worker}), lambda req: text(f"{worker}-GOT " + last_tool_result(req))]
        return Lane(worker, steps, match=f"TASK-ID: {worker}\n")

    script = [Lane("main", [tool_uses(spawn("w1"), spawn("w2")), text("BOTH-DONE")]), worker_lane("w1"), worker_lane("w2")]
    result, server, log = drive(tmp_path, claude, script, "start two workers", agent=True)

    assert sorted(call["text"] for call in echo_calls(log)) == ["w1", "w2"]
    assert [server.played(lane) for lane in ("main", "w1", "w2")] == [2, 2, 2]
    results = [r["text"] for r in tool_results(server.lane_requests("main")[-1])]
    # Each Agent result wraps the worker's final text ("[Subagent hand-back] ... w1-GOT {"result":"echo: w1"}").
    for worker in ("w1", "w2"):
        assert any(f'{worker}-GOT {{"result":"echo: {worker}"}}' in text for text in results), results
    assert result.result == "BOTH-DONE"


def _tool_uses(request: dict) -> list[dict]:
    return [block for message in request.get("messages", []) if message.get("role") == "assistant"
            and isinstance(message.get("content"), list) for block in message["content"]
            if block.get("type") == "tool_use"]  # fmt: skip


# ------------------------------------------------------------------------ the fake server alone (no claude needed)


def _post(url: str, body: dict, timeout: float = 10) -> tuple[int, str]:
    request = urllib.request.Request(url + "/v1/messages?beta=true", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_fake_model_lanes_streaming_and_transients() -> None:
    tools = [{"name": "Bash", "input_schema": {"type": "object"}}]
    script = [
        Lane("main", [tool_use("Bash", {"command": "ls"}), text("MAIN-END")]),
        Lane("sub", [text("SUB-END")], match="TASK-ID: s"),
    ]
    with FakeModel(script) as server:
        # A side request (no tools) gets a harmless reply and plays no step.
        status, body = _post(server.url, {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]})
        assert status == 200 and json.loads(body)["content"][0]["text"] == "ok"
        assert server.played("main") == 0

        base = {"model": "m", "max_tokens": 100, "tools": tools, "stream": True}
        status, body = _post(server.url, dict(base, messages=[{"role": "user", "content": "go"}]))
        events = [line.split(": ", 1)[1] for line in body.splitlines() if line.startswith("event: ")]
        assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
        assert "input_json_delta" in body and '"stop_reason": "tool_use"' in body

        status, body = _post(server.url, dict(base, stream=False, messages=[{"role": "user", "content": "TASK-ID: s"}]))
        assert json.loads(body)["content"] == [{"type": "text", "text": "SUB-END"}]

        history = [{"role": "user", "content": "go"},
                   {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a.txt"}]}]  # fmt: skip
        status, body = _post(server.url, dict(base, stream=False, messages=history))
        assert json.loads(body)["content"][0]["text"] == "MAIN-END"
        assert last_tool_result(server.lane_requests("main")[-1]) == "a.txt"
        assert json.loads(json.dumps(server.requests[0]))["messages"][0]["content"] == "quota"
        assert not server.problems
        # A subagent no lane matches is not given the main lane's steps.
        stray = dict(base, stream=False, system=[{"type": "text", "text": "x-anthropic-billing-header: cc_is_subagent=true;"}],
                     messages=[{"role": "user", "content": "TASK-ID: unknown"}])  # fmt: skip
        assert json.loads(_post(server.url, stray)[1])["content"][0]["text"] == "ok"
        assert server.played("main") == 2 and "matched no lane" in server.problems[0]

    with FakeModel([error(529), text("AFTER-RETRY")]) as server:
        request = {"model": "m", "max_tokens": 100, "tools": tools, "messages": [{"role": "user", "content": "x"}]}
        assert _post(server.url, request)[0] == 529
        status, body = _post(server.url, request)
        assert status == 200 and "AFTER-RETRY" in body
        status, body = _post(server.url, dict(request, messages=[{"role": "user", "content": "x"}] * 1
                                              + [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]))
        assert "script exhausted" in body and server.problems

    with FakeModel([hang(30), text("AFTER-HANG")]) as server:
        request = {"model": "m", "max_tokens": 100, "tools": tools, "messages": [{"role": "user", "content": "x"}]}
        with pytest.raises(OSError):  # the client gives up (urllib raises a timeout)
            _post(server.url, request, timeout=0.5)
        status, body = _post(server.url, request)
        assert status == 200 and "AFTER-HANG" in body
        deadline = time.monotonic() + 5
        while "client_closed_after" not in server.records[0].reply and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.records[0].reply["client_closed_after"] < 5
