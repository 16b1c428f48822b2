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
    SEARCH_AGAIN,
    FakeModel,
    Lane,
    after_tool_search,
    assistant_turns,
    deferred_tools,
    error,
    first_user_text,
    hang,
    last_tool_result,
    loaded_tool_names,
    still_connecting,
    system_text,
    text,
    tool_calls,
    tool_names,
    tool_results,
    tool_use,
    tool_uses,
)

PLUGIN = "tplug"
ECHO = f"mcp__plugin_{PLUGIN}_tasks__echo"
REVERSE = f"mcp__plugin_{PLUGIN}_tasks__reverse"  # never searched for: it stays deferred, announced by name only

MCP_SERVER = '''\
"""A two-tool MCP server for the tests: echo(text) and reverse(text) log each call to $ECHO_LOG."""
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


@srv.tool()
def reverse(text: str) -> str:
    """Reverse the text."""
    with open(os.environ["ECHO_LOG"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"tool": "reverse", "text": text}) + "\\n")
    return text[::-1]


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


def test_deferred_mcp_tool_via_toolsearch(tmp_path: Path, claude: str, cpu_hog) -> None:
    # The model loads the tool with ToolSearch (searching again while Claude Code says the server is still
    # connecting), calls it, then answers with what it returned.
    reply = lambda req: text("ANSWER-A " + last_tool_result(req))  # noqa: E731
    script = after_tool_search(ECHO, [tool_use(ECHO, {"text": "hello-a"}), reply])
    result, server, log = drive(tmp_path, claude, script, "please echo hello-a")

    assert echo_calls(log) == [{"tool": "echo", "text": "hello-a"}]
    main = server.lane_requests("main")
    assert [assistant_turns(req) for req in main] == list(range(len(main))) and len(main) >= 3
    searches = main[:-2]  # the requests answered with ToolSearch; then one with the echo call, one with the answer
    assert [call for call, _ in tool_calls(main[-1])] == ["ToolSearch"] * len(searches) + [ECHO]
    # Deferred: not callable at first, only announced -- by name if its server had connected before the first
    # request, else as a server that is still connecting (Claude Code does not wait for a deferred server).
    assert "ToolSearch" in tool_names(main[0])
    assert not [req for req in searches if ECHO in tool_names(req)], "in `tools` before ToolSearch loaded it"
    named, connecting = ECHO in deferred_tools(main[0]), f"plugin:{PLUGIN}:tasks" in still_connecting(main[0])
    assert named != connecting, (deferred_tools(main[0]), still_connecting(main[0]))
    # Once connected, the server's tools that no ToolSearch loaded are announced by name and stay out of `tools`.
    assert REVERSE in deferred_tools(main[-1]) and not [req for req in main if REVERSE in tool_names(req)]
    print(f"first request: {'the tool was announced by name' if named else 'its server was still connecting'}; "
          f"{len(searches)} ToolSearch call(s)")  # fmt: skip
    # A search that ran while the server was still connecting said so; the last one loaded the tool's schema.
    answers = tool_results(main[-2])
    for answer in answers[:-1]:
        assert SEARCH_AGAIN in answer["text"] and f"plugin:{PLUGIN}:tasks" in answer["text"], answer
    assert loaded_tool_names(answers[-1]) == [ECHO] and not answers[-1]["is_error"], answers[-1]
    loaded = next(tool for tool in main[-2]["tools"] if tool["name"] == ECHO)
    assert loaded["defer_loading"] is True and loaded["input_schema"]["properties"]["text"]["type"] == "string"
    echo_result = tool_results(main[-1])[-1]
    assert not echo_result["is_error"]
    assert "echo: hello-a" in echo_result["text"]
    assert result.result == "ANSWER-A " + echo_result["text"]


def test_always_load_mcp_tool_is_in_first_request(tmp_path: Path, claude: str, cpu_hog) -> None:
    script = [tool_use(ECHO, {"text": "hello-b"}), text("ANSWER-B")]
    result, server, log = drive(tmp_path, claude, script, "please echo hello-b", always_load=True)

    assert echo_calls(log) == [{"tool": "echo", "text": "hello-b"}]
    first = server.lane_requests("main")[0]
    # Claude Code waits (about 8 s) for an alwaysLoad server before its first request.
    assert ECHO in tool_names(first), ("the alwaysLoad server was not connected in time", still_connecting(first))
    tool = next(tool for tool in first["tools"] if tool["name"] == ECHO)
    assert "defer_loading" not in tool
    assert tool["input_schema"]["properties"]["text"]["type"] == "string"
    assert "ToolSearch" not in [name for req in server.requests for name, _ in tool_calls(req)]
    assert "echo: hello-b" in last_tool_result(server.lane_requests("main")[-1])
    assert result.result == "ANSWER-B"


def connected(request: dict) -> bool:
    """The echo server is up: its tool is loaded, or announced by name (then it is no longer "still connecting")."""
    return ECHO in tool_names(request) or ECHO in deferred_tools(request)


def main_lane(steps: list) -> Lane:
    """The main session waits for the echo server before it starts workers: a subagent started while the server is
    still connecting gets no echo tool and cannot wait for it (its `tools:` has no ToolSearch), so the main model
    uses ToolSearch -- which waits for connecting servers -- first, as Claude Code tells it to."""
    return Lane("main", after_tool_search(ECHO, steps, until=connected))


def searches(request: dict) -> int:
    return sum(1 for name, _ in tool_calls(request) if name == "ToolSearch")


def test_subagent_runs_in_its_own_lane(tmp_path: Path, claude: str, cpu_hog) -> None:
    task = "TASK-ID: w1"
    script = [
        main_lane([
            tool_use("Agent", {"description": "worker w1", "prompt": f"{task}\nEcho from-worker.",
                               "subagent_type": f"{PLUGIN}:worker", "run_in_background": False}),
            lambda req: text("MAIN-DONE " + last_tool_result(req)),
        ]),
        Lane("worker", [tool_use(ECHO, {"text": "from-worker"}), text("WORKER-DONE")], match=task),
    ]  # fmt: skip
    result, server, log = drive(tmp_path, claude, script, "start one worker", agent=True)

    assert echo_calls(log) == [{"tool": "echo", "text": "from-worker"}]
    main = server.lane_requests("main")
    assert server.played("main") == searches(main[-1]) + 2
    assert server.played("worker") == 2
    worker = server.lane_requests("worker")
    assert task in first_user_text(worker[0])
    assert "WORKER-AGENT-BODY" in system_text(worker[0])
    assert ECHO in tool_names(worker[0]), tool_names(worker[0])  # started after the server connected: it has its tool
    assert "Agent" not in tool_names(worker[0])  # a plugin agent only gets its `tools`
    assert "echo: from-worker" in last_tool_result(worker[-1])
    # The worker's final text came back to the main lane as the Agent tool's result.
    assert "WORKER-DONE" in last_tool_result(main[-1])
    assert result.result.startswith("MAIN-DONE ") and "WORKER-DONE" in result.result


def test_parallel_subagents_interleave_in_their_lanes(tmp_path: Path, claude: str, cpu_hog) -> None:
    def spawn(worker: str):
        return tool_use("Agent", {"description": f"worker {worker}", "prompt": f"TASK-ID: {worker}\nEcho {worker}.",
                                  "subagent_type": f"{PLUGIN}:worker", "run_in_background": False})  # fmt: skip

    def worker_lane(worker: str) -> Lane:
        # The worker echoes its name, then answers with what the tool returned.
        steps = [tool_use(ECHO, {"text": worker}), lambda req: text(f"{worker}-GOT " + last_tool_result(req))]
        return Lane(worker, steps, match=f"TASK-ID: {worker}\n")

    script = [main_lane([tool_uses(spawn("w1"), spawn("w2")), text("BOTH-DONE")]), worker_lane("w1"), worker_lane("w2")]
    result, server, log = drive(tmp_path, claude, script, "start two workers", agent=True)

    assert sorted(call["text"] for call in echo_calls(log)) == ["w1", "w2"]
    main = server.lane_requests("main")
    assert [server.played(lane) for lane in ("main", "w1", "w2")] == [searches(main[-1]) + 2, 2, 2]
    assert all(ECHO in tool_names(server.lane_requests(worker)[0]) for worker in ("w1", "w2"))
    results = [r["text"] for r in tool_results(main[-1])]
    # Each Agent result wraps the worker's final text ("[Subagent hand-back] ... w1-GOT {"result":"echo: w1"}").
    for worker in ("w1", "w2"):
        assert any(f'{worker}-GOT {{"result":"echo: {worker}"}}' in text for text in results), results
    assert result.result == "BOTH-DONE"


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
        status, body = _post(
            server.url, {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}
        )
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
        status, body = _post(
            server.url,
            dict(
                request,
                messages=[{"role": "user", "content": "x"}] * 1
                + [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
            ),
        )
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


def test_after_tool_search_searches_again_while_the_server_connects() -> None:
    """The ToolSearch-first lane against hand-made requests shaped like Claude Code 2.1.328's."""
    notice = ("The following MCP servers are still connecting — their tools (typically named mcp__<server>__*) "
              "are not yet available but will appear shortly:\nplugin:tplug:tasks\n\nIf the user's request "
              "might be served by one of these servers, call ToolSearch ...")  # fmt: skip
    announced = ("The following deferred tools are now available via ToolSearch. Their schemas are NOT loaded — "
                 f'... "select:<name>[,<name>...]" to load tool schemas before calling them:\nMonitor\n{ECHO}\n')  # fmt: skip
    again = ("No matching deferred tools found. Some MCP servers are still connecting: plugin:tplug:tasks. "
             "Their tools will become available shortly — try searching again.")  # fmt: skip
    base = [{"name": "ToolSearch", "input_schema": {"type": "object"}}]
    loaded = base + [{"name": ECHO, "input_schema": {"type": "object"}, "defer_loading": True}]
    search = {"query": f"select:{ECHO}", "max_results": 5}

    def turn(n: int, result) -> list[dict]:
        use = {"type": "tool_use", "id": f"t{n}", "name": "ToolSearch", "input": search}
        return [{"role": "assistant", "content": [use]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{n}", "content": result}]}]  # fmt: skip

    prompt = [{"type": "text", "text": "go"}, {"type": "text", "text": notice}]
    first = {"model": "m", "max_tokens": 100, "tools": base, "messages": [{"role": "user", "content": prompt}]}
    assert still_connecting(first) == ["plugin:tplug:tasks"] and deferred_tools(first) == []
    assert deferred_tools({"system": announced}) == ["Monitor", ECHO]
    second = dict(first, messages=first["messages"] + turn(1, again))
    reference = [{"type": "tool_reference", "tool_name": ECHO}]
    third = dict(first, tools=loaded, messages=second["messages"] + turn(2, reference))
    with FakeModel(after_tool_search(ECHO, [tool_use(ECHO, {"text": "x"}), text("END")], searches=2)) as server:
        for request, expected in ((first, "ToolSearch"), (second, "ToolSearch"), (third, ECHO)):
            content = json.loads(_post(server.url, request)[1])["content"]
            assert [block.get("name") for block in content] == [expected], (expected, content)
        assert loaded_tool_names(tool_results(third)[-1]) == [ECHO]
        assert SEARCH_AGAIN in tool_results(second)[-1]["text"]
        assert not server.problems
        # Out of searches while the server still connects: the lane is exhausted, and says so.
        stuck = dict(second, messages=second["messages"] + turn(2, again))
        assert json.loads(_post(server.url, stuck)[1])["content"][0]["text"] == "(fake model: script exhausted)"
        assert server.problems == ["lane 'main' exhausted at step 2"]
