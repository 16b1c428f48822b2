"""A scripted fake of the Anthropic Messages API, for driving the real `claude` binary in tests (stdlib only).

    from fake_model import FakeModel, Lane, tool_use, text, last_tool_result

    script = [
        Lane("main", [
            tool_use("ToolSearch", {"query": "select:mcp__plugin_tplug_tasks__echo"}),
            tool_use("mcp__plugin_tplug_tasks__echo", {"text": "hi"}),
            lambda req: text("the tool said " + last_tool_result(req)),
        ]),
        Lane("worker", [tool_use("Bash", {"command": "true"}), text("WORKER-DONE")], match="TASK-ID: w1"),
    ]
    with FakeModel(script) as server:
        ...  # run claude with ANTHROPIC_BASE_URL=server.url
        server.requests            # every request body, in arrival order
        server.lane_requests("worker")

How a request is answered
-------------------------
* Routing: each `POST /v1/messages` is given to the first *marker lane* whose `match` accepts it (a string is looked
  for in the system prompt and the first user message's text; a callable gets the request body), else to the
  *default lane* (the lane without `match`, normally "main") if the request is a conversation turn of the main
  session (`is_agent_turn` and not `is_subagent`). Everything else -- side requests such as a 1-token quota probe or a no-tools
  title/topic generation -- gets a short harmless text reply (`side_reply`) and never consumes a script step.
  (Claude Code 2.1.328 in `-p` mode with CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 made no side requests at all in
  our runs; without that variable it only contacts api.anthropic.com, never the base URL. The guard is for other
  versions.) Pick markers that occur only in the subagent's prompt, e.g. "TASK-ID: w1\n" (the newline keeps
  "w1" from matching "w10").
* Within a lane the step to play is the number of assistant messages already in the request's `messages`: stateless,
  so retries replay the same step and concurrent lanes (main session + subagents) cannot disturb each other.
* A step is `text(...)`, `tool_use(...)` / `tool_uses(...)` (several parallel tool uses in one assistant message),
  or a callable `(request_body) -> step` evaluated when the request arrives (use `last_tool_result(req)` to react to
  what the previous tool returned; returning None means the lane has no step left). `after_tool_search(name, steps)`
  is a lane for a model that first loads a deferred MCP tool with ToolSearch, searching again while Claude Code says
  the tool's server is still connecting (`still_connecting(req)`, `deferred_tools(req)` read those notices).
  `error(...)` and `hang(...)` are *transient*: they are played once (or `times`
  times) before the next real step and do not count as an assistant turn, so the client's retry gets the real step.
* When a lane runs out of steps it answers `text(exhausted_text)` and records the fact in `server.problems`.
"""

from __future__ import annotations

import itertools
import json
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlparse

from loopback import LoopbackServer, chunks, count_tokens

# ---------------------------------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Text:
    """An assistant message made of one text block; ends the turn (stop_reason end_turn)."""

    text: str


@dataclass(frozen=True)
class ToolUse:
    """An assistant message with one or more tool_use blocks (parallel calls), optionally preceded by text."""

    calls: tuple[tuple[str, dict], ...]
    text: str = ""


@dataclass(frozen=True)
class Error:
    """Transient: answer HTTP `status` with an API error body, `times` times, before the next real step."""

    status: int = 529
    kind: str = "overloaded_error"
    message: str = "Overloaded"
    times: int = 1


@dataclass(frozen=True)
class Hang:
    """Transient: accept the request and send nothing for `seconds` (then a 529), `times` times.

    The hang ends early when the client disconnects (its record then gets `reply["client_closed_after"]`) or
    when the server stops."""

    seconds: float = 600.0
    times: int = 1


Step = Text | ToolUse | Error | Hang | Callable[[dict], Any]


def text(value: str) -> Text:
    return Text(value)


def tool_use(name: str, input: dict | None = None, *, text: str = "") -> ToolUse:  # noqa: A002 - the API's field
    """One tool call: `tool_use("Bash", {"command": "ls"})`."""
    return ToolUse(((name, dict(input or {})),), text)


def tool_uses(*calls: ToolUse | tuple[str, dict], text: str = "") -> ToolUse:
    """Several parallel tool calls in one assistant message: `tool_uses(("A", {...}), tool_use("B", {...}))`."""
    merged: list[tuple[str, dict]] = []
    for call in calls:
        if isinstance(call, ToolUse):
            merged.extend(call.calls)
        else:
            name, args = call
            merged.append((name, dict(args)))
    return ToolUse(tuple(merged), text)


def error(status: int = 529, kind: str = "overloaded_error", message: str = "Overloaded", times: int = 1) -> Error:
    return Error(status, kind, message, times)


def hang(seconds: float = 600.0, times: int = 1) -> Hang:
    return Hang(seconds, times)


# ------------------------------------------------------------------------------------------------ request helpers


def _block_text(content: Any) -> str:
    """The text of a message / tool_result `content` (a string or a list of blocks)."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, dict):
            if block.get("type") == "text":
                parts.append(block.get("text", ""))
            elif block.get("type") == "tool_result":
                parts.append(_block_text(block.get("content")))
    return "\n".join(parts)


def system_text(request: dict) -> str:
    """The system prompt as one string (the `system` field may be a string or a list of text blocks)."""
    return _block_text(request.get("system") or "")


def first_user_text(request: dict) -> str:
    """The text blocks of the first user message (the prompt; for a subagent, the Agent tool's `prompt`)."""
    for message in request.get("messages") or []:
        if message.get("role") == "user":
            return _block_text(message.get("content"))
    return ""


def assistant_turns(request: dict) -> int:
    """How many assistant messages the conversation already holds = the index of the step to play."""
    return sum(1 for message in request.get("messages") or [] if message.get("role") == "assistant")


def tool_names(request: dict) -> list[str]:
    """Names in the request's `tools` array (what the model can call right now)."""
    return [tool.get("name", "") for tool in request.get("tools") or []]


def tool_results(request: dict) -> list[dict]:
    """Every tool_result in the conversation, oldest first: {tool_use_id, is_error, text, content}."""
    found = []
    for message in request.get("messages") or []:
        if message.get("role") != "user" or not isinstance(message.get("content"), list):
            continue
        for block in message["content"]:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                found.append({
                    "tool_use_id": block.get("tool_use_id"),
                    "is_error": bool(block.get("is_error")),
                    "text": _block_text(block.get("content")),
                    "content": block.get("content"),
                })  # fmt: skip
    return found


def last_user_text(request: dict) -> str:
    """The text blocks of the latest user message (e.g. a background agent's completion notification)."""
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            return _block_text(message.get("content"))
    return ""


def last_tool_result(request: dict) -> str:
    """The text of the most recent tool_result ('' if none): what the previous tool call returned."""
    results = tool_results(request)
    return results[-1]["text"] if results else ""


def last_tool_result_json(request: dict) -> Any:
    """The most recent tool_result parsed as JSON (MCP tools return their structured result as JSON text)."""
    return json.loads(last_tool_result(request))


def request_text(request: dict) -> str:
    """Everything Claude Code wrote to the model in this request: the system prompt, then the text blocks of every
    message of any role (its system reminders, e.g. the deferred-tool and still-connecting notices, are messages)."""
    parts = [system_text(request)]
    parts += [_block_text(message.get("content")) for message in request.get("messages") or []]
    return "\n".join(parts)


def _listed_after(request: dict, heading: str) -> list[str]:
    """The one-a-line names under every "<heading> ...:" paragraph of the request's text, in order, once each."""
    found: list[str] = []
    for match in re.finditer(re.escape(heading) + r"[^\n]*:\n((?:[^\n]+\n?)+)", request_text(request)):
        found += [line.strip() for line in match.group(1).splitlines() if line.strip() and line.strip() not in found]
    return found


def deferred_tools(request: dict) -> list[str]:
    """The tools Claude Code announced by name only, to be loaded with ToolSearch ("The following deferred tools are
    now available via ToolSearch. ... before calling them:" then one name a line)."""
    return _listed_after(request, "The following deferred tools are now available via ToolSearch")


def still_connecting(request: dict) -> list[str]:
    """The MCP servers Claude Code said were still connecting when it sent this request, e.g. ['plugin:tplug:tasks']
    ("The following MCP servers are still connecting ...:" then one a line; it adds: "call ToolSearch ... ToolSearch
    will wait for connecting servers"). Their tools are in neither `tools` nor `deferred_tools` yet."""
    return _listed_after(request, "The following MCP servers are still connecting")


def tool_calls(request: dict) -> list[tuple[str, dict]]:
    """(name, input) of every tool_use the conversation's assistant messages hold, oldest first."""
    return [(block.get("name", ""), block.get("input") or {}) for message in request.get("messages") or []
            if message.get("role") == "assistant" and isinstance(message.get("content"), list)
            for block in message["content"] if isinstance(block, dict) and block.get("type") == "tool_use"]  # fmt: skip


def loaded_tool_names(result: dict) -> list[str]:
    """The tools a ToolSearch result (an item of `tool_results`) loaded: its `tool_reference` blocks."""
    content = result.get("content")
    return [block.get("tool_name", "") for block in content if isinstance(block, dict)
            and block.get("type") == "tool_reference"] if isinstance(content, list) else []  # fmt: skip


SEARCH_AGAIN = "try searching again"  # ToolSearch's answer while the tool's server is still connecting


def after_tool_search(name: str, steps: list, *, until: Callable[[dict], bool] | None = None,
                      searches: int = 10) -> list:  # fmt: skip
    """A lane's steps for a model that first gets deferred tool `name` with ToolSearch, as a real model does: it calls
    `ToolSearch {"query": "select:<name>"}` until `until(request)` holds (by default: `name` is in the request's
    `tools`, i.e. its schema is loaded), then plays `steps` (texts, tool uses, callables; no transients).

    ToolSearch waits for servers that are still connecting (about 5 s a call in 2.1.328), then either loads the tool
    or answers "No matching deferred tools found. Some MCP servers are still connecting: ... try searching again";
    the model searches again then, up to `searches` times (Claude Code gives up on a server after 30 s). So the
    script holds whether or not the server had connected before Claude Code's first request."""
    until = until or (lambda request: name in tool_names(request))
    query = f"select:{name}"

    def step(request: dict):
        made = sum(1 for tool, args in tool_calls(request) if tool == "ToolSearch" and args.get("query") == query)
        if not until(request):
            return tool_use("ToolSearch", {"query": query, "max_results": 5}) if made < searches else None
        index = assistant_turns(request) - made
        return steps[index] if index < len(steps) else None

    return [step] * (searches + len(steps))


def is_agent_turn(request: dict) -> bool:
    """True for a conversation turn of an agent loop, False for a side request.

    Agent turns (main session and subagents) always carry a `tools` array and a large `max_tokens` (128000 in
    2.1.328). Side requests that Claude Code versions make -- a `max_tokens: 1` quota probe, no-tools title/topic
    generations -- fail this test."""
    if not request.get("tools"):
        return False
    return (request.get("max_tokens") or 0) > 1


def is_subagent(request: dict) -> bool:
    """A subagent's request: Claude Code marks it `cc_is_subagent=true` in the billing-header system block."""
    return "cc_is_subagent=true" in system_text(request)


# ----------------------------------------------------------------------------------------------------------- lanes


@dataclass
class Lane:
    """A scripted conversation. `match`: None (the default lane), a marker string, or `(request) -> bool`.

    The default lane takes the main session's agent turns only: a subagent request that no marker lane matches is
    answered with the side reply and noted in `server.problems` (a script bug, usually)."""

    name: str
    steps: list = field(default_factory=list)
    match: str | Callable[[dict], bool] | None = None

    def accepts(self, request: dict) -> bool:
        if self.match is None:
            return is_agent_turn(request) and not is_subagent(request)
        if callable(self.match):
            return bool(self.match(request))
        return self.match in system_text(request) or self.match in first_user_text(request)

    def plan(self) -> list[tuple[list, Any]]:
        """The steps grouped into turns: (transient steps played first, the real step)."""
        turns, pending = [], []
        for step in self.steps:
            if isinstance(step, (Error, Hang)):
                pending.append(step)
            else:
                turns.append((pending, step))
                pending = []
        if pending:
            turns.append((pending, None))
        return turns


@dataclass
class Record:
    """One request as received, and how it was answered."""

    method: str
    path: str
    lane: str | None  # None: a side request or a non-messages path
    turn: int | None
    body: Any
    reply: Any = None
    time: float = 0.0


# ---------------------------------------------------------------------------------------------------------- server

SIDE_REPLY = "ok"


class FakeModel(LoopbackServer):
    """A scripted Messages-API server on 127.0.0.1:<free port>; use as a context manager."""

    def __init__(
        self,
        script: Iterable[Lane] | dict[str, list] | list | None = None,
        *,
        log_path: str | None = None,
        side_reply: str = SIDE_REPLY,
        exhausted_text: str = "(fake model: script exhausted)",
        chunk_size: int = 40,
    ):
        self.lanes = _normalise(script)
        self.log_path = log_path
        self.side_reply = side_reply
        self.exhausted_text = exhausted_text
        self.chunk_size = chunk_size
        self.records: list[Record] = []
        self.problems: list[str] = []
        self._lock = threading.Lock()
        self._transients_served: dict[tuple[str, int], int] = {}
        self._plans = {lane.name: lane.plan() for lane in self.lanes}
        self._ids = itertools.count(1)
        self._stopping = threading.Event()

    # -- lifecycle

    thread_name = "fake-model"

    def handler(self):
        return _make_handler(self)

    def stop(self) -> None:
        self._stopping.set()
        super().stop()

    # -- what was asked

    @property
    def requests(self) -> list:
        """Every POST /v1/messages body, in arrival order (side requests included)."""
        with self._lock:
            return [r.body for r in self.records if r.path == "/v1/messages"]

    def lane_requests(self, lane: str) -> list[dict]:
        """The request bodies routed to `lane`, in arrival order."""
        with self._lock:
            return [r.body for r in self.records if r.lane == lane]

    def side_requests(self) -> list[dict]:
        """Messages requests that matched no lane (Claude Code's own side requests)."""
        with self._lock:
            return [r.body for r in self.records if r.path == "/v1/messages" and r.lane is None]

    def paths(self) -> list[str]:
        with self._lock:
            return [f"{r.method} {r.path}" for r in self.records]

    def played(self, lane: str) -> int:
        """The highest step index of `lane` that has been served, plus one (0: the lane never played)."""
        with self._lock:
            turns = [r.turn for r in self.records if r.lane == lane and r.turn is not None]
        return max(turns) + 1 if turns else 0

    # -- answering

    def _log(self, record: Record) -> None:
        with self._lock:
            self.records.append(record)
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as handle:
                    entry = {"time": record.time, "method": record.method, "path": record.path, "lane": record.lane,
                             "turn": record.turn, "body": record.body}  # fmt: skip
                    handle.write(json.dumps(entry) + "\n")

    def route(self, body: dict) -> tuple[str | None, int | None, Any]:
        """(lane name, step index, step) for a messages request; the step is already resolved (callables called)."""
        chosen = next((lane for lane in self.lanes if lane.match is not None and lane.accepts(body)), None)
        if chosen is None:
            chosen = next((lane for lane in self.lanes if lane.match is None and lane.accepts(body)), None)
        if chosen is None:
            if is_agent_turn(body) and is_subagent(body):
                with self._lock:
                    self.problems.append(f"subagent request matched no lane: {first_user_text(body)[:200]!r}")
            return None, None, Text(self.side_reply)
        turn = assistant_turns(body)
        plan = self._plans[chosen.name]
        if turn >= len(plan):
            with self._lock:
                self.problems.append(f"lane {chosen.name!r} exhausted at step {turn}")
            return chosen.name, turn, Text(self.exhausted_text)
        transients, step = plan[turn]
        with self._lock:
            served = self._transients_served.get((chosen.name, turn), 0)
            budget = 0
            for transient in transients:
                budget += transient.times
                if served < budget:
                    self._transients_served[(chosen.name, turn)] = served + 1
                    return chosen.name, turn, transient
        if step is None:
            with self._lock:
                self.problems.append(f"lane {chosen.name!r} exhausted at step {turn}")
            return chosen.name, turn, Text(self.exhausted_text)
        for _ in range(10):  # a callable may return another callable, or None: no step left
            if not callable(step):
                break
            step = step(body)
        if step is None:
            with self._lock:
                self.problems.append(f"lane {chosen.name!r} exhausted at step {turn}")
            return chosen.name, turn, Text(self.exhausted_text)
        if not isinstance(step, (Text, ToolUse, Error, Hang)):
            with self._lock:
                self.problems.append(f"lane {chosen.name!r} step {turn}: bad step {step!r}")
            step = Text(self.exhausted_text)
        return chosen.name, turn, step

    def message_for(self, step: Text | ToolUse, body: dict) -> dict:
        """The assistant message (non-streaming shape) for a real step."""
        n = next(self._ids)
        content: list[dict] = []
        if isinstance(step, Text):
            content.append({"type": "text", "text": step.text})
            stop = "end_turn"
        else:
            if step.text:
                content.append({"type": "text", "text": step.text})
            for i, (name, args) in enumerate(step.calls):
                content.append({"type": "tool_use", "id": f"toolu_{n:04d}_{i}", "name": name, "input": args})
            stop = "tool_use"
        out_tokens = max(1, len(json.dumps(content)) // 4)
        return {
            "id": f"msg_fake_{n:04d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model") or "claude-fake",
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": count_tokens(body),
                "output_tokens": out_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

    def sse_for(self, message: dict) -> bytes:
        """The streaming event sequence for `message`."""
        events: list[tuple[str, dict]] = []
        start = dict(message, content=[], stop_reason=None, stop_sequence=None)
        start["usage"] = dict(message["usage"], output_tokens=1)
        events.append(("message_start", {"type": "message_start", "message": start}))
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                       "content_block": {"type": "text", "text": ""}}))  # fmt: skip
                for chunk in chunks(block["text"], self.chunk_size):
                    events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                           "delta": {"type": "text_delta", "text": chunk}}))  # fmt: skip
            else:
                events.append(("content_block_start", {"type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}))  # fmt: skip
                for chunk in chunks(json.dumps(block["input"]), self.chunk_size):
                    events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                           "delta": {"type": "input_json_delta", "partial_json": chunk}}))  # fmt: skip
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                         "usage": {"output_tokens": message["usage"]["output_tokens"]}}))  # fmt: skip
        events.append(("message_stop", {"type": "message_stop"}))
        return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


def _client_closed(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _normalise(script) -> list[Lane]:
    if script is None:
        return [Lane("main", [])]
    if isinstance(script, dict):
        return [Lane(name, list(steps)) if name == "main" else Lane(name, list(steps), match=name)
                for name, steps in script.items()]  # fmt: skip
    items = list(script)
    if items and all(isinstance(item, Lane) for item in items):
        defaults = [lane for lane in items if lane.match is None]
        if len(defaults) > 1:
            raise ValueError("at most one lane may have no `match` (the default lane)")
        return items
    if any(isinstance(item, Lane) for item in items):
        raise ValueError("a script is either a list of Lane objects or a list of steps (for the main lane)")
    return [Lane("main", items)]


def _make_handler(model: FakeModel):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeModel/1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, payload: bytes, content_type: str = "application/json", headers=None) -> None:
            try:
                self._send_unchecked(status, payload, content_type, headers)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _send_unchecked(self, status: int, payload: bytes, content_type: str, headers) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("request-id", f"req_fake_{time.monotonic_ns()}")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()

        def _json(self, status: int, data: Any, headers=None) -> None:
            self._send(status, json.dumps(data).encode(), headers=headers)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw) if raw else None
            except ValueError:
                return raw.decode("utf-8", "replace")

        def do_GET(self) -> None:
            path = urlparse(self.path).path
            model._log(Record("GET", path, None, None, None, time=time.time()))
            if path.rstrip("/") in ("", "/v1/models"):
                self._json(200, {"data": [], "has_more": False, "first_id": None, "last_id": None})
            else:
                self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": f"no {path}"}})

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            path = urlparse(self.path).path
            body = self._body()
            if path == "/v1/messages/count_tokens":
                model._log(Record("POST", path, None, None, body, time=time.time()))
                self._json(200, {"input_tokens": count_tokens(body)})
                return
            if path != "/v1/messages" or not isinstance(body, dict):
                model._log(Record("POST", path, None, None, body, time=time.time()))
                self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": f"no {path}"}})
                return
            try:
                lane, turn, step = model.route(body)
            except Exception as exc:  # noqa: BLE001 - a broken script callable: answer, and let the test see it
                with model._lock:
                    model.problems.append(f"script error: {exc!r}")
                lane, turn, step = None, None, Error(500, "api_error", f"fake model script error: {exc!r}")
            record = Record("POST", path, lane, turn, body, time=time.time())
            if isinstance(step, Hang):
                record.reply = {"hang": step.seconds}
                model._log(record)
                started = time.monotonic()
                while time.monotonic() - started < step.seconds and not model._stopping.wait(0.1):
                    if _client_closed(self.connection):
                        with model._lock:
                            record.reply["client_closed_after"] = round(time.monotonic() - started, 2)
                        self.close_connection = True
                        return
                step = Error(529, "overloaded_error", "Overloaded (after hang)")
            if isinstance(step, Error):
                if record.reply is None:
                    record.reply = {"error": step.status}
                    model._log(record)
                self._json(step.status, {"type": "error", "error": {"type": step.kind, "message": step.message}},
                           headers={"x-should-retry": "true"})  # fmt: skip
                return
            message = model.message_for(step, body)
            record.reply = message
            model._log(record)
            if body.get("stream"):
                self._send(200, model.sse_for(message), "text/event-stream", {"Cache-Control": "no-cache"})
            else:
                self._json(200, message)

    return Handler
