"""The scripted fake Gemini API drives the real, pinned Gemini CLI: a built-in write_file call with a relative path,
an MCP tool from a linked extension (with logging Before/AfterTool hooks), and an extension BeforeTool hook that
blocks a write.

These tests need npm (the pinned CLI is installed into build/npm/ on first use). If it can't be installed they
FAIL rather than skip: CI must run them.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from fake_gemini import (
    FakeGemini,
    Lane,
    call,
    calls,
    first_user_text,
    function_calls,
    function_responses,
    last_function_response,
    last_user_text,
    model_turns,
    response_text,
    text,
    tool_names,
)
from gemini_cli import run_gemini

EXTENSION = "tgext"  # extension names may not contain underscores
SERVER = "probe"  # nor should MCP server names: mcp_<server>_<tool> is split at the first "_"
ECHO = f"mcp_{SERVER}_echo"

MCP_SERVER = '''\
"""A one-tool MCP server for the tests: echo(text) logs each call to $ECHO_LOG."""
import json
import os

from mcp.server.mcpserver import MCPServer

srv = MCPServer("probe")


@srv.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    with open(os.environ["ECHO_LOG"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"tool": "echo", "text": text}) + "\\n")
    return f"echo: {text}"


srv.run("stdio")
'''

HOOK = '''\
"""Log the hook's stdin to <log>; print <reply> (a JSON object) on stdout."""
import sys

log, reply = sys.argv[1], sys.argv[2]
data = sys.stdin.read()
with open(log, "a", encoding="utf-8") as handle:
    handle.write(data.strip() + "\\n")
sys.stdout.write(reply)
'''

BLOCK_REASON = "writes are frozen by the test hook"


def make_extension(root: Path, *, mcp: bool = False, hooks: dict[str, tuple[str, dict]] | None = None) -> Path:
    """A throwaway extension `tgext` in `root/ext`: optionally MCP server `probe` (tool `echo`, log root/echo.log)
    and hooks: {event: (matcher, reply)} -- each hook logs its stdin to root/<event>.jsonl and prints `reply`."""
    ext = root / "ext"
    ext.mkdir(parents=True)
    manifest: dict = {"name": EXTENSION, "version": "0.0.1", "description": "Throwaway test extension"}
    if mcp:
        (ext / "echo_server.py").write_text(MCP_SERVER)
        manifest["mcpServers"] = {SERVER: {"command": sys.executable, "args": ["${extensionPath}${/}echo_server.py"],
                                           "env": {"ECHO_LOG": str(root / "echo.log")}}}  # fmt: skip
    (ext / "gemini-extension.json").write_text(json.dumps(manifest, indent=2))
    if hooks:
        (ext / "hooks").mkdir()
        (ext / "hooks" / "log_hook.py").write_text(HOOK)
        config: dict = {"hooks": {}}
        for event, (matcher, reply) in hooks.items():
            log = root / f"{event}.jsonl"
            command = f"{sys.executable} ${{extensionPath}}/hooks/log_hook.py {log} '{json.dumps(reply)}'"
            config["hooks"][event] = [{"matcher": matcher, "hooks": [
                {"name": f"test-{event}", "type": "command", "command": command, "timeout": 10000}]}]  # fmt: skip
        (ext / "hooks" / "hooks.json").write_text(json.dumps(config, indent=2))
    return ext


def hook_inputs(root: Path, event: str) -> list[dict]:
    log = root / f"{event}.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def drive(tmp_path: Path, gemini: str, script, prompt: str, *, extension: Path | None = None, **options):
    project = tmp_path / "project"
    project.mkdir()
    with FakeGemini(script, log_path=str(tmp_path / "requests.jsonl")) as server:
        result = run_gemini(prompt, project, server.url, extension_dir=extension, gemini=gemini,
                            home=tmp_path / "home", timeout=120, **options)  # fmt: skip
    assert result.returncode == 0, result.describe()
    assert not server.problems, (server.problems, result.describe())
    assert result.blocked_urls == [], "the run tried to reach the network"
    return result, server, project


def test_write_file_with_a_relative_path(tmp_path: Path, gemini: str) -> None:
    script = [
        call("write_file", {"file_path": "hello.txt", "content": "hello from the fake\n"}),
        lambda req: text("WROTE: " + response_text(last_function_response(req))),
    ]
    result, server, project = drive(tmp_path, gemini, script, "please write hello.txt", env={"HYPERVISOR_WORKER": "1"})

    assert (project / "hello.txt").read_text() == "hello from the fake\n"
    first, second = server.requests
    assert [model_turns(req) for req in server.requests] == [0, 1]
    assert "write_file" in tool_names(first) and "run_shell_command" in tool_names(first)  # --yolo
    assert last_user_text(first) == "please write hello.txt"
    assert function_calls(second) == [{"name": "write_file", "args": {"file_path": "hello.txt",
                                                                      "content": "hello from the fake\n"}}]  # fmt: skip
    (response,) = function_responses(second)
    assert response["name"] == "write_file" and "error" not in response["response"]
    assert "Successfully created and wrote to new file" in response["response"]["output"]
    assert str(project / "hello.txt") in response["response"]["output"]
    assert result.stdout.strip().startswith("WROTE: Successfully created")
    # The router classifier was answered on the side; it did not consume a step.
    assert any("complexity" in json.dumps(req.get("generationConfig")) for req in server.side_requests())
    assert result.env["HYPERVISOR_WORKER"] == "1" and result.env["GEMINI_API_KEY"] == "test"


def test_mcp_tool_of_a_linked_extension(tmp_path: Path, gemini: str) -> None:
    ext = make_extension(tmp_path, mcp=True, hooks={"BeforeTool": ("^mcp_", {}), "AfterTool": ("^mcp_", {})})
    script = [
        call(ECHO, {"text": "hi-mcp"}),
        lambda req: text("MCP-SAID " + response_text(last_function_response(req))),
    ]
    result, server, _ = drive(tmp_path, gemini, script, "echo hi-mcp", extension=ext,
                              extra_args=("-o", "stream-json"))  # fmt: skip

    calls_made = [json.loads(line) for line in (tmp_path / "echo.log").read_text().splitlines()]
    assert calls_made == [{"tool": "echo", "text": "hi-mcp"}]
    assert ECHO in tool_names(server.requests[0])
    response = last_function_response(server.requests[-1])
    assert response["name"] == ECHO and "echo: hi-mcp" in response_text(response), response
    assert result.text.startswith("MCP-SAID ") and "echo: hi-mcp" in result.text
    assert [event["status"] for event in result.tool_results] == ["success"]
    assert result.result["status"] == "success"

    (before,) = hook_inputs(tmp_path, "BeforeTool")
    assert before["hook_event_name"] == "BeforeTool" and before["tool_name"] == ECHO
    assert before["tool_input"] == {"text": "hi-mcp"}
    assert before["mcp_context"]["server_name"] == SERVER and before["mcp_context"]["tool_name"] == "echo"
    (after,) = hook_inputs(tmp_path, "AfterTool")
    assert after["tool_name"] == ECHO and after["tool_input"] == {"text": "hi-mcp"}
    llm_content = after["tool_response"]["llmContent"]
    assert isinstance(llm_content, list) and "echo: hi-mcp" in json.dumps(llm_content), after


def test_extension_before_tool_hook_blocks_write_file(tmp_path: Path, gemini: str) -> None:
    ext = make_extension(tmp_path, hooks={"BeforeTool": ("^(write_file|replace)$",
                                                         {"decision": "block", "reason": BLOCK_REASON})})  # fmt: skip
    script = [
        call("write_file", {"file_path": "blocked.txt", "content": "nope\n"}),
        lambda req: text("BLOCKED: " + response_text(last_function_response(req))),
    ]
    result, server, project = drive(tmp_path, gemini, script, "write blocked.txt", extension=ext,
                                    extra_args=("-o", "stream-json"))  # fmt: skip

    assert not (project / "blocked.txt").exists()
    (before,) = hook_inputs(tmp_path, "BeforeTool")
    assert before["tool_name"] == "write_file"
    assert before["tool_input"] == {"file_path": "blocked.txt", "content": "nope\n"}  # relative, as the model sent it
    assert Path(before["cwd"]).resolve() == project.resolve()
    response = last_function_response(server.requests[-1])
    assert response["name"] == "write_file"
    assert response["response"] == {"error": f"Tool execution blocked: {BLOCK_REASON}"}
    (tool_result,) = result.tool_results
    assert tool_result["status"] == "error" and BLOCK_REASON in tool_result["error"]["message"]
    assert result.text == f"BLOCKED: Tool execution blocked: {BLOCK_REASON}"


# ------------------------------------------------------------------------ the fake server alone (no gemini needed)


def _post(url: str, path: str, body: dict) -> tuple[int, str, str]:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, "", exc.read().decode()


def _sse(body: str) -> list[dict]:
    return [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")]


def test_fake_gemini_lanes_streaming_and_side_requests() -> None:
    tools = [{"functionDeclarations": [{"name": "write_file"}, {"name": "read_file"}]}]
    user = {"role": "user", "parts": [{"text": "go"}]}
    script = [
        Lane("main", [calls(("read_file", {"file_path": "a"}), call("write_file", {"file_path": "b", "content": ""})),
                      lambda req: text("MAIN-END " + response_text(last_function_response(req)))]),
        Lane("sub", [text("SUB-END " + "x" * 100)], match="TASK-ID: s\n"),
    ]  # fmt: skip
    with FakeGemini(script) as server:
        stream = "/v1beta/models/gemini-x:streamGenerateContent?alt=sse"
        # The router classifier gets its JSON, without consuming a step.
        complexity = {"type": "OBJECT", "properties": {"complexity_reasoning": {"type": "STRING"},
                                                       "complexity_score": {"type": "INTEGER"}}}  # fmt: skip
        classifier = {
            "contents": [user],
            "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": complexity},
        }
        status, _, body = _post(server.url, "/v1beta/models/gemini-lite:generateContent", classifier)
        reply = json.loads(json.loads(body)["candidates"][0]["content"]["parts"][0]["text"])
        assert status == 200 and reply == {"complexity_reasoning": "x", "complexity_score": 1}
        # Another structured side request gets a minimal object that fits its schema.
        next_speaker = {
            "type": "object",
            "properties": {
                "reasoning": {"type": "string"},
                "next_speaker": {"type": "string", "enum": ["model", "user"]},
            },
        }
        speaker = {"contents": [user], "generationConfig": {"responseJsonSchema": next_speaker}}
        status, _, body = _post(server.url, "/v1beta/models/m:generateContent", speaker)
        assert json.loads(json.loads(body)["candidates"][0]["content"]["parts"][0]["text"])["next_speaker"] == "user"
        assert server.played("main") == 0

        status, ctype, body = _post(server.url, stream, {"contents": [user], "tools": tools})
        assert status == 200 and ctype == "text/event-stream"
        (event,) = _sse(body)
        parts = event["candidates"][0]["content"]["parts"]
        assert [part["functionCall"]["name"] for part in parts] == ["read_file", "write_file"]
        assert event["candidates"][0]["finishReason"] == "STOP"
        usage = event["usageMetadata"]
        assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"] > 0

        # A marker lane; a long text is streamed in chunks, usage only on the last event.
        sub = {"contents": [{"role": "user", "parts": [{"text": "TASK-ID: s\nwork"}]}], "tools": tools}
        events = _sse(_post(server.url, stream, sub)[2])
        assert len(events) > 1 and all("usageMetadata" not in e for e in events[:-1]) and "usageMetadata" in events[-1]
        assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == "SUB-END " + "x" * 100
        assert first_user_text(server.lane_requests("sub")[0]).startswith("TASK-ID: s")

        model_turn = [
            {"functionCall": {"name": "read_file", "args": {}}},
            {"functionCall": {"name": "write_file", "args": {}}},
        ]
        results = [
            {"functionResponse": {"name": "read_file", "response": {"output": "A"}}},
            {"functionResponse": {"name": "write_file", "response": {"error": "E"}}},
        ]
        history = [user, {"role": "model", "parts": model_turn}, {"role": "user", "parts": results}]
        body = {"contents": history, "tools": tools}
        status, _, body = _post(server.url, "/v1beta/models/gemini-x:generateContent", body)
        assert json.loads(body)["candidates"][0]["content"]["parts"] == [{"text": "MAIN-END E"}]
        assert [(r["name"], r["response"]) for r in function_responses(server.requests[-1])] == [
            ("read_file", {"output": "A"}), ("write_file", {"error": "E"})]  # fmt: skip
        assert last_user_text(server.requests[-1]) == "go"
        assert json.loads(_post(server.url, "/v1beta/models/m:countTokens", {"contents": [user]})[2])["totalTokens"] > 0
        assert server.played("main") == 2 and server.played("sub") == 1
        assert len(server.requests) == 3 and len(server.side_requests()) == 2
        assert server.usage_totals()["totalTokenCount"] > server.usage_totals(lanes_only=True)["totalTokenCount"] > 0
        assert not server.problems

        # Out of steps: a text reply, and a problem on record.
        more = history + [{"role": "model", "parts": [{"text": "MAIN-END E"}]}, user]
        body = _post(server.url, "/v1beta/models/m:generateContent", {"contents": more, "tools": tools})[2]
        assert "script exhausted" in body and server.problems == ["lane 'main' exhausted at step 2"]
