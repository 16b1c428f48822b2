"""The MCP server's stdio front (scripts/launch.py mcp): the handshake answered at once from answers recorded from
the real server, the real server started behind it, tool calls relayed, and every failure answered in words."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO, write_task
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from hypervisor.frontends import mcp_handshake
from hypervisor.frontends.mcp_server import TOOL_NAMES

LAUNCH = str(REPO / "scripts" / "launch.py")
BARE_PYTHON = getattr(sys, "_base_executable", sys.executable)  # the interpreter the venv was made from


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERVISOR_", "CLAUDE_"))}
    env.update(extra)
    return env


class Wire:
    """A front process spoken to in raw JSON-RPC lines, as Claude Code speaks to it."""

    def __init__(self, cwd: Path, env: dict, python: str = sys.executable, args: tuple[str, ...] = ()) -> None:
        self.process = subprocess.Popen([python, "-S", LAUNCH, "mcp", *args], cwd=cwd, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip

    def send(self, message: dict) -> None:
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()

    def reply(self, wanted_id) -> dict:
        while True:
            line = self.process.stdout.readline()
            assert line, "the front closed its output"
            message = json.loads(line)
            if message.get("id") == wanted_id:
                return message

    def handshake(self) -> dict:
        """Claude Code's opening: discover, initialize, initialized, then the three lists together."""
        self.send({"jsonrpc": "2.0", "id": "server-discover-probe-1", "method": "server/discover",
                   "params": {"protocolVersion": "2026-07-28"}})  # fmt: skip
        discover = self.reply("server-discover-probe-1")
        self.send(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "test", "version": "0"},
                },
            }
        )
        init = self.reply(0)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        for number, method in enumerate(("tools/list", "prompts/list", "resources/list"), 1):
            self.send({"jsonrpc": "2.0", "id": number, "method": method, "params": {}})
        lists = {method: self.reply(number) for number, method in enumerate(("tools", "prompts", "resources"), 1)}
        return {"discover": discover, "initialize": init, **lists}

    def call(self, request_id: int, tool: str, arguments: dict) -> dict:
        self.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                   "params": {"name": tool, "arguments": arguments}})  # fmt: skip
        return self.reply(request_id)["result"]

    def close(self) -> int:
        self.process.stdin.close()
        return self.process.wait(timeout=60)


def payload(result: dict) -> dict:
    """A tool result's value: structured content where the server sends it, else its JSON text."""
    return result.get("structuredContent") or json.loads(result["content"][0]["text"])


def test_the_recorded_handshake_is_what_the_real_server_answers():
    recorded = mcp_handshake.load()["versions"]
    fresh = mcp_handshake.record(sys.executable)["versions"]
    assert recorded == fresh, (
        "run `python -m hypervisor.frontends.mcp_handshake` after changing a tool, and commit the file"
    )
    tools = recorded["2025-11-25"]["tools/list"]["result"]["tools"]
    assert sorted(tool["name"] for tool in tools) == sorted(TOOL_NAMES)


def test_the_handshake_is_answered_before_the_real_server_can_start(tmp_path):
    """The backend's interpreter waits for a file the test writes only after the whole handshake was answered:
    so the answers cannot have come from it. Then a tool call made meanwhile is answered by the real server."""
    gate = tmp_path / "go"
    slow_python = tmp_path / "slow-python"
    slow_python.write_text(f'#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.05; done\nexec {sys.executable} "$@"\n')
    slow_python.chmod(0o755)
    write_task(tmp_path / "tasks", "t1", status="active", title="One")
    wire = Wire(tmp_path, clean_env(HYPERVISOR_PYTHON=str(slow_python)), python=BARE_PYTHON)
    try:
        answers = wire.handshake()
        assert answers["discover"]["error"]["code"] == -32601
        assert answers["initialize"]["result"]["protocolVersion"] == "2025-11-25"
        assert answers["initialize"]["result"]["serverInfo"]["name"] == "task_manager"
        assert sorted(t["name"] for t in answers["tools"]["result"]["tools"]) == sorted(TOOL_NAMES)
        assert answers["prompts"]["result"] == {"prompts": []}
        assert not gate.exists()
        wire.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                   "params": {"name": "list_tasks", "arguments": {"ready": True}}})  # fmt: skip
        gate.write_text("")
        result = wire.reply(7)["result"]
        assert not result.get("isError"), result
        assert [task["id"] for task in payload(result)["tasks"]] == ["t1"]
    finally:
        assert wire.close() == 0


def test_without_a_task_root_the_server_starts_and_every_call_says_how_to_make_one(tmp_path):
    async def scenario():
        params = StdioServerParameters(command=sys.executable, args=["-S", LAUNCH, "mcp"], env=clean_env(),
                                       cwd=str(tmp_path))  # fmt: skip
        async with Client(params) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert tools == set(TOOL_NAMES)
            for tool, arguments in (("list_tasks", {}), ("claim_next_task", {"caller": "w1"})):
                result = await client.call_tool(tool, arguments)
                assert result.is_error, result
                advice = result.content[0].text
                assert f"task root {tmp_path / 'tasks'} does not exist" in advice, advice
                for way in ("hypervisor init", "tasks: DIR", ".hypervisor.yaml", "HYPERVISOR_TASKS"):
                    assert way in advice, (way, advice)
            # Following the advice works in the same session: no restart.
            (tmp_path / "tasks").mkdir()
            write_task(tmp_path / "tasks", "t1", status="active")
            result = await client.call_tool("list_tasks", {})
            assert not result.is_error, result.content
            assert [task["id"] for task in json.loads(result.content[0].text)["tasks"]] == ["t1"]

    asyncio.run(scenario())
    assert sorted(os.listdir(tmp_path)) == ["tasks"], "nothing written into a project before it has a task root"


def test_a_killed_real_server_is_restarted_and_the_call_in_flight_is_answered(tmp_path):
    write_task(tmp_path / "tasks", "t1", status="active")
    wire = Wire(tmp_path, clean_env())
    try:
        wire.handshake()
        assert not wire.call(1, "list_tasks", {}).get("isError")
        tasks = Path(f"/proc/{wire.process.pid}/task").iterdir()  # the child is a child of the front's thread
        children = [pid for task in tasks for pid in (task / "children").read_text().split()]
        real = [int(pid) for pid in children if "\0hypervisor\0mcp" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(real) == 1, children
        os.kill(real[0], signal.SIGKILL)
        result = wire.call(2, "list_tasks", {})
        if result.get("isError"):  # the call raced the kill: answered with the reason, and the next one works
            assert "stopped" in result["content"][0]["text"], result
            result = wire.call(3, "list_tasks", {})
        assert not result.get("isError"), result
        assert [task["id"] for task in payload(result)["tasks"]] == ["t1"]
    finally:
        assert wire.close() == 0


def test_when_the_dependencies_cannot_be_installed_each_call_is_a_tool_error_saying_why(tmp_path):
    """A plugin copy with no .venv, run by an interpreter without the dependencies, whose data folder cannot be
    made: the handshake still succeeds, and the tool call is answered with the reason instead of hanging."""
    plugin = tmp_path / "plugin"
    for name in ("scripts", "src"):
        shutil.copytree(REPO / name, plugin / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.lock"):
        shutil.copy(REPO / name, plugin / name)
    (tmp_path / "not-a-folder").write_text("")
    env = clean_env(CLAUDE_PLUGIN_DATA=str(tmp_path / "not-a-folder" / "data"))
    process = subprocess.Popen([BARE_PYTHON, "-S", str(plugin / "scripts" / "launch.py"), "mcp"], cwd=tmp_path,
                               env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    wire = Wire.__new__(Wire)
    wire.process = process
    try:
        answers = wire.handshake()
        assert sorted(t["name"] for t in answers["tools"]["result"]["tools"]) == sorted(TOOL_NAMES)
        result = wire.call(1, "list_tasks", {})
        assert result["isError"], result
        assert "could not start" in result["content"][0]["text"], result
    finally:
        assert wire.close() == 0


def test_a_request_json_can_spell_but_utf8_cannot_hold_is_answered_not_lost(tmp_path):
    """ "\\ud800" (a lone surrogate) parses as JSON but cannot be written on as UTF-8, and the real server drops a
    line it cannot read without an answer: the front answers it itself, before the ping sent after it."""
    write_task(tmp_path / "tasks", "t1", status="active")
    wire = Wire(tmp_path, clean_env())
    try:
        wire.handshake()
        arguments = '{"id": "t1", "note": "half \\ud800 a character"}'
        wire.process.stdin.write(('{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": '
                                  f'"update_task", "arguments": {arguments}}}}}\n').encode())  # fmt: skip
        wire.send({"jsonrpc": "2.0", "id": 6, "method": "ping"})
        answered = []
        while not answered or answered[-1].get("id") != 6:
            answered.append(json.loads(wire.process.stdout.readline()))
        assert [message.get("id") for message in answered] == [5, 6], answered
        result = answered[0]["result"]
        assert result["isError"] and "'\\ud800', a lone surrogate" in result["content"][0]["text"], result
        assert payload(wire.call(7, "get_task", {"id": "t1"}))["status"] == "active"  # still serving
    finally:
        assert wire.close() == 0
    assert "half" not in (tmp_path / "tasks" / "t1.md").read_text()
