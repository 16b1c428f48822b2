"""One reading of a Claude Code or Gemini CLI tool-hook payload: which host, phase, tool, files and worker."""

from __future__ import annotations

import os

from ..claims.workers import Worker
from ..core import lightjson, rules
from ..core.errors import HookInputError

TYPE_CHECKING = False  # typing costs a hook 4 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Mapping

MCP_SERVER = rules.MCP_SERVER
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024

PHASES = {"PreToolUse": "pre", "BeforeTool": "pre", "PostToolUse": "post", "PostToolUseFailure": "post",
          "AfterTool": "post"}  # fmt: skip
GEMINI_EVENTS = frozenset({"BeforeTool", "AfterTool"})

# Gemini CLI's built-in tools under the Claude Code names the rest of hypervisor uses.
GEMINI_TOOLS = {
    "write_file": "Write", "replace": "Edit", "run_shell_command": "Bash", "read_file": "Read", "glob": "Glob",
    "grep_search": "Grep", "search_file_content": "Grep", "list_directory": "LS", "web_fetch": "WebFetch",
    "google_web_search": "WebSearch", "write_todos": "TodoWrite",
}  # fmt: skip
# File-editing tools and the input field holding the path they change (MultiEdit: Claude builds before 2.1).
EDIT_TOOLS = {"Write": "file_path", "Edit": "file_path", "MultiEdit": "file_path", "NotebookEdit": "notebook_path"}


class ToolCall:
    """A tool call as both CLIs describe it, with Claude Code's tool names and absolute paths."""

    __slots__ = ("host", "phase", "event", "tool", "raw_tool", "server", "mcp_tool", "tool_input", "tool_response",
                 "failed", "paths", "cwd", "worker")  # fmt: skip

    def __init__(self, **fields: object) -> None:
        for name in self.__slots__:
            setattr(self, name, fields.get(name))

    @property
    def is_edit(self) -> bool:
        return self.tool in EDIT_TOOLS

    @property
    def task_tool(self) -> str | None:
        """The hypervisor MCP tool called (`claim_next_task`, ...), or None for any other tool."""
        return self.mcp_tool if self.server == MCP_SERVER else None

    def response_object(self) -> dict | None:
        """The JSON object an MCP tool returned, from Claude's JSON string or Gemini's wrapped text parts."""
        response = self.tool_response
        if isinstance(response, dict) and "llmContent" in response:
            response = response["llmContent"]
        if isinstance(response, list):
            response = "".join(part.get("text", "") for part in response if isinstance(part, dict)
                               and isinstance(part.get("text"), str))  # fmt: skip
        if isinstance(response, dict):
            return response
        if not isinstance(response, str):
            return None
        start, end = response.find("{"), response.rfind("}")
        if start < 0 or end < start:
            return None
        try:
            value = lightjson.loads(response[start : end + 1])
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, dict) else None


def read_payload(stream, limit: int = MAX_PAYLOAD_BYTES) -> bytes:
    """The hook's stdin, up to `limit` bytes; HookInputError beyond."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise HookInputError(f"payload larger than {limit // (1024 * 1024)} MiB")
    return data


def parse(raw: bytes | str, env: Mapping[str, str]) -> ToolCall:
    """Normalise one PreToolUse/PostToolUse(Failure)/BeforeTool/AfterTool payload; HookInputError if unusable."""
    try:
        payload = lightjson.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise HookInputError(f"stdin is not JSON ({error})") from None
    except RecursionError:
        raise HookInputError("stdin is JSON nested too deeply to read") from None
    if not isinstance(payload, dict):
        raise HookInputError(f"stdin is JSON {type(payload).__name__}, not an object")
    event = _text(payload, "hook_event_name", required=True)
    phase = PHASES.get(event)
    if phase is None:
        raise HookInputError(f"hook_event_name {event!r} is not a tool event ({', '.join(PHASES)})")
    raw_tool = _text(payload, "tool_name", required=True)
    tool_input = payload.get("tool_input", {})
    if not isinstance(tool_input, dict):
        raise HookInputError(f"tool_input is {type(tool_input).__name__}, not an object")
    host = "gemini" if event in GEMINI_EVENTS else "claude"
    cwd = _text(payload, "cwd") or env.get("GEMINI_CWD") or env.get("CLAUDE_PROJECT_DIR") or os.getcwd()
    if not os.path.isabs(cwd):
        raise HookInputError(f"cwd {cwd!r} is not an absolute path")
    server, mcp_tool = _mcp_name(payload, raw_tool, host)
    tool = raw_tool if host == "claude" else GEMINI_TOOLS.get(raw_tool, raw_tool)
    if server is not None:
        tool = f"mcp:{server}:{mcp_tool}"
    paths: tuple[str, ...] = ()
    if tool in EDIT_TOOLS:
        path = tool_input.get(EDIT_TOOLS[tool])
        if not isinstance(path, str) or not path or "\0" in path:
            raise HookInputError(f"{raw_tool}: tool_input.{EDIT_TOOLS[tool]} is {_short(path)}, not a file path")
        paths = (
            os.path.normpath(os.path.join(cwd, _encodable(path))),
        )  # Gemini sends paths relative to the session cwd
    response = payload.get("tool_response")
    failed = event == "PostToolUseFailure" or (isinstance(response, dict) and bool(response.get("error")))
    worker = Worker(
        session_id=_text(payload, "session_id") or env.get("GEMINI_SESSION_ID", "") or env.get("CLAUDE_CODE_SESSION_ID", ""),
        agent_id=_text(payload, "agent_id"),
        agent_type=_text(payload, "agent_type"),
    )  # fmt: skip
    return ToolCall(host=host, phase=phase, event=event, tool=tool, raw_tool=raw_tool, server=server,
                    mcp_tool=mcp_tool, tool_input=tool_input, tool_response=response, failed=failed, paths=paths,
                    cwd=cwd, worker=worker)  # fmt: skip


def _text(payload: dict, key: str, required: bool = False) -> str:
    value = payload.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value) or "\0" in value:
        raise HookInputError(f"{key} is {_short(value)}, not a string")
    return _encodable(value)


def _encodable(text: str) -> str:
    """`text` with lone surrogates (legal in JSON, not in a file name) replaced by U+FFFD, as Node writes them."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _mcp_name(payload: dict, tool_name: str, host: str) -> tuple[str | None, str | None]:
    """(server, tool) of an MCP call, or (None, None); both CLIs' spellings, preferring their structured fields."""
    if host == "gemini":
        if tool_name in GEMINI_TOOLS:
            return None, None  # a built-in tool is never an MCP call, whatever else the payload says
        context = payload.get("mcp_context")
        if isinstance(context, dict) and isinstance(context.get("server_name"), str) \
                and isinstance(context.get("tool_name"), str):  # fmt: skip
            return context["server_name"], context["tool_name"]
        prefix = rules.MCP_TOOL_PREFIX["gemini"]
        if tool_name.startswith(prefix) and len(tool_name) > len(prefix):
            return MCP_SERVER, tool_name[len(prefix) :]
        return None, None
    if not tool_name.startswith("mcp__"):
        return None, None
    qualified, sep, tool = tool_name[5:].rpartition("__")
    if not sep or not qualified or not tool:
        return None, None
    server = qualified
    info = payload.get("mcp_server")
    if isinstance(info, dict) and isinstance(info.get("name"), str):
        server = info["name"].rpartition(":")[2]  # "plugin:hypervisor:task_manager"
    elif qualified.startswith("plugin_") and qualified.endswith("_" + MCP_SERVER):
        server = MCP_SERVER
    return server, tool
