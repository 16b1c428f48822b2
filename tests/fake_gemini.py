"""A scripted fake of the Gemini API (generativelanguage v1beta), for driving the real `gemini` CLI in tests
(stdlib only). The sibling of fake_model.py (the Anthropic fake) with the same "lane" idea.

    from fake_gemini import FakeGemini, Lane, call, text, last_function_response

    script = [
        call("write_file", {"file_path": "hello.txt", "content": "hi\\n"}),
        lambda req: text("wrote it: " + json.dumps(last_function_response(req))),
    ]
    with FakeGemini(script) as server:
        ...  # run gemini with GOOGLE_GEMINI_BASE_URL=server.url (see gemini_cli.run_gemini)
        server.requests            # the agent-turn request bodies, in arrival order
        server.problems            # script bugs: exhausted lanes, failing callables, unmatched requests

How a request is answered
-------------------------
* `POST /v1beta/models/<model>:streamGenerateContent?alt=sse` is answered as `text/event-stream` (`data: {...}` events,
  the text split in chunks, the function calls, finishReason and usageMetadata in the last event);
  `POST ...:generateContent` as one JSON response. Both carry `usageMetadata` {promptTokenCount,
  candidatesTokenCount, totalTokenCount} (a rough 4-characters-a-token count; `server.usage_totals()` sums them).
  `...:countTokens` gets `{"totalTokens": n}`, `...:embedContent` a tiny vector.
* Side requests never consume a step: the CLI's model-router classifier (a `generateContent` whose
  `generationConfig.responseJsonSchema` asks for `complexity_reasoning` / `complexity_score`) gets
  `{"complexity_reasoning":"x","complexity_score":1}`; any other request with a JSON response schema gets a minimal
  object built from the schema (an enum offering "user" gets "user", so a next-speaker check ends the turn); any other
  request that declares no tools gets the text `side_reply`.
* Routing of agent turns: a request goes to the first *marker lane* whose `match` accepts it (a string is looked for in
  the system instruction and the first user text; a callable gets the body), else to the *default lane* (the lane
  without `match`, normally "main") if the request declares tools.
* Within a lane the step to play is the number of `role:"model"` turns already in the request's `contents`:
  stateless, so retries replay the same step and concurrent lanes cannot disturb each other.
* A step is `text(...)`, `call(name, args)` (one functionCall), `calls(...)` (several functionCalls in one model turn),
  or a callable `(request_body) -> step` evaluated when the request arrives.
* When a lane runs out of steps it answers `text(exhausted_text)` and records the fact in `server.problems`.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from loopback import LoopbackServer, chunks, count_tokens

# ---------------------------------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Text:
    """A model turn made of one text part; ends the agent loop."""

    text: str


@dataclass(frozen=True)
class Calls:
    """A model turn with one or more functionCall parts (parallel calls), optionally preceded by text."""

    calls: tuple[tuple[str, dict], ...]
    text: str = ""


Step = Text | Calls | Callable[[dict], Any]


def text(value: str) -> Text:
    return Text(value)


def call(name: str, args: dict | None = None, *, text: str = "") -> Calls:
    """One function call: `call("write_file", {"file_path": "a.txt", "content": "x"})`."""
    return Calls(((name, dict(args or {})),), text)


def calls(*items: Calls | tuple[str, dict], text: str = "") -> Calls:
    """Several function calls in one model turn: `calls(("read_file", {...}), call("glob", {...}))`."""
    merged: list[tuple[str, dict]] = []
    for item in items:
        if isinstance(item, Calls):
            merged.extend(item.calls)
        else:
            name, args = item
            merged.append((name, dict(args)))
    return Calls(tuple(merged), text)


# ------------------------------------------------------------------------------------------------ request helpers


def _parts_text(parts: Any) -> str:
    """The text parts of a `parts` list (or of a Content dict / a plain string) joined with newlines."""
    if isinstance(parts, str):
        return parts
    if isinstance(parts, dict):
        parts = parts.get("parts")
    texts = [part.get("text") for part in parts or [] if isinstance(part, dict)]
    return "\n".join(value for value in texts if isinstance(value, str))


def _contents(request: dict) -> list[dict]:
    contents = request.get("contents") or []
    if isinstance(contents, dict):
        contents = [contents]
    return [item for item in contents if isinstance(item, dict)]


def system_text(request: dict) -> str:
    """The system instruction as one string ('' if none)."""
    return _parts_text(request.get("systemInstruction") or request.get("system_instruction") or "")


def first_user_text(request: dict) -> str:
    """The text parts of the first user content (the CLI puts its environment context there too)."""
    for content in _contents(request):
        if content.get("role", "user") == "user":
            return _parts_text(content)
    return ""


def last_user_text(request: dict) -> str:
    """The text of the latest user content that has text (tool-result-only turns are skipped), without the
    `<session_context>...` part the CLI puts before the first prompt: for the first turn, the prompt itself."""
    for content in reversed(_contents(request)):
        if content.get("role", "user") == "user":
            texts = [part.get("text") for part in content.get("parts") or [] if isinstance(part, dict)]
            parts = [{"text": value} for value in texts
                     if isinstance(value, str) and not value.startswith("<session_context>")]  # fmt: skip
            if parts:
                return _parts_text(parts)
    return ""


def model_turns(request: dict) -> int:
    """How many `role:"model"` turns the conversation already holds = the index of the step to play."""
    return sum(1 for content in _contents(request) if content.get("role") == "model")


def tool_names(request: dict) -> list[str]:
    """The function names declared in the request's `tools` (what the model can call right now)."""
    names = []
    for tool in request.get("tools") or []:
        if isinstance(tool, dict):
            for decl in tool.get("functionDeclarations") or tool.get("function_declarations") or []:
                names.append(decl.get("name", ""))
    return names


def function_calls(request: dict) -> list[dict]:
    """Every functionCall the model made in the conversation, oldest first: {name, args}."""
    found = []
    for content in _contents(request):
        if content.get("role") == "model":
            for part in content.get("parts") or []:
                if isinstance(part, dict) and isinstance(part.get("functionCall"), dict):
                    fc = part["functionCall"]
                    found.append({"name": fc.get("name"), "args": fc.get("args") or {}})
    return found


def function_responses(request: dict) -> list[dict]:
    """Every functionResponse in the conversation, oldest first: {name, response (a dict), id}.

    The CLI answers a tool with `{"output": ...}` and a failed or blocked one with `{"error": ...}`."""
    found = []
    for content in _contents(request):
        for part in content.get("parts") or []:
            if isinstance(part, dict) and isinstance(part.get("functionResponse"), dict):
                fr = part["functionResponse"]
                response = fr.get("response")
                found.append({"name": fr.get("name"), "response": response if isinstance(response, dict)
                              else {"output": response}, "id": fr.get("id")})  # fmt: skip
    return found


def last_function_response(request: dict) -> dict | None:
    """The most recent functionResponse ({name, response, id}), None if there is none."""
    responses = function_responses(request)
    return responses[-1] if responses else None


def response_text(response: dict | None) -> str:
    """A functionResponse's `response` as text: its output (or error), JSON-encoded if it isn't a string."""
    if not response:
        return ""
    inner = response.get("response", response) if "name" in response else response
    value = inner.get("output", inner.get("error", inner)) if isinstance(inner, dict) else inner
    return value if isinstance(value, str) else json.dumps(value)


def json_schema(request: dict) -> dict | None:
    """The response JSON schema a structured-output (side) request asks for, None for a free-form request."""
    config = request.get("generationConfig") or request.get("generation_config") or {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema") or config.get("response_json_schema")
    if isinstance(schema, dict):
        return schema
    if config.get("responseMimeType") == "application/json":
        return {}
    return None


def is_classifier(request: dict) -> bool:
    """The CLI's model-router classifier request (asks for complexity_reasoning / complexity_score)."""
    schema = json_schema(request)
    return schema is not None and "complexity_score" in json.dumps(schema)


def is_agent_turn(request: dict) -> bool:
    """A turn of an agent loop: declares tools and asks for free-form output (not a JSON side request)."""
    return bool(tool_names(request)) and json_schema(request) is None


# ----------------------------------------------------------------------------------------------------------- lanes


@dataclass
class Lane:
    """A scripted conversation. `match`: None (the default lane), a marker string, or `(request) -> bool`."""

    name: str
    steps: list = field(default_factory=list)
    match: str | Callable[[dict], bool] | None = None

    def accepts(self, request: dict) -> bool:
        if self.match is None:
            return is_agent_turn(request)
        if callable(self.match):
            return bool(self.match(request))
        return self.match in system_text(request) or self.match in first_user_text(request)


@dataclass
class Record:
    """One request as received, and how it was answered."""

    method: str  # HTTP method
    path: str
    action: str | None  # generateContent, streamGenerateContent, countTokens, ... (None: another path)
    model: str | None
    lane: str | None  # None: a side request
    turn: int | None
    body: Any
    reply: Any = None
    time: float = 0.0


# ---------------------------------------------------------------------------------------------------------- server

SIDE_REPLY = "ok"
CLASSIFIER_REPLY = {"complexity_reasoning": "x", "complexity_score": 1}
GENERATE_ACTIONS = ("generateContent", "streamGenerateContent")


class FakeGemini(LoopbackServer):
    """A scripted Gemini-API server on 127.0.0.1:<free port>; use as a context manager."""

    def __init__(
        self,
        script: Iterable[Lane] | dict[str, list] | list | None = None,
        *,
        log_path: str | None = None,
        side_reply: str = SIDE_REPLY,
        exhausted_text: str = "(fake gemini: script exhausted)",
        chunk_size: int = 40,
    ):
        self.lanes = _normalise(script)
        self.log_path = log_path
        self.side_reply = side_reply
        self.exhausted_text = exhausted_text
        self.chunk_size = chunk_size
        self.records: list[Record] = []
        self.problems: list[str] = []
        self._steps = {lane.name: list(lane.steps) for lane in self.lanes}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    # -- lifecycle

    thread_name = "fake-gemini"

    def handler(self):
        return _make_handler(self)

    # -- what was asked

    @property
    def requests(self) -> list[dict]:
        """The agent-turn request bodies (those answered from a lane), in arrival order."""
        with self._lock:
            return [r.body for r in self.records if r.lane is not None]

    def lane_requests(self, lane: str) -> list[dict]:
        """The request bodies routed to `lane`, in arrival order."""
        with self._lock:
            return [r.body for r in self.records if r.lane == lane]

    def side_requests(self) -> list[dict]:
        """generateContent / streamGenerateContent bodies that no lane took (router classifier etc.)."""
        with self._lock:
            return [r.body for r in self.records if r.action in GENERATE_ACTIONS and r.lane is None]

    def paths(self) -> list[str]:
        with self._lock:
            return [f"{r.method} {r.path}" for r in self.records]

    def played(self, lane: str) -> int:
        """The highest step index of `lane` that has been served, plus one (0: the lane never played)."""
        with self._lock:
            turns = [r.turn for r in self.records if r.lane == lane and r.turn is not None]
        return max(turns) + 1 if turns else 0

    def usage_totals(self, lanes_only: bool = False) -> dict[str, int]:
        """The usageMetadata of every reply sent, summed (only agent turns with `lanes_only`)."""
        totals = {"promptTokenCount": 0, "candidatesTokenCount": 0, "totalTokenCount": 0}
        with self._lock:
            for record in self.records:
                if lanes_only and record.lane is None:
                    continue
                usage = record.reply.get("usageMetadata") if isinstance(record.reply, dict) else None
                for key in totals:
                    totals[key] += (usage or {}).get(key, 0)
        return totals

    # -- answering

    def _log(self, record: Record) -> None:
        with self._lock:
            self.records.append(record)
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as handle:
                    entry = {"time": record.time, "path": record.path, "action": record.action,
                             "model": record.model, "lane": record.lane, "turn": record.turn,
                             "body": record.body, "reply": record.reply}  # fmt: skip
                    handle.write(json.dumps(entry) + "\n")

    def _problem(self, message: str) -> None:
        with self._lock:
            self.problems.append(message)

    def route(self, body: dict) -> tuple[str | None, int | None, Any]:
        """(lane name, step index, step) for a generate request; side requests get (None, None, reply).

        The reply of a side request is a Text step or, for a structured-output request, the JSON object to send."""
        schema = json_schema(body)
        if schema is not None:
            return None, None, dict(CLASSIFIER_REPLY) if is_classifier(body) else _sample(schema)
        chosen = next((lane for lane in self.lanes if lane.match is not None and lane.accepts(body)), None)
        if chosen is None:
            chosen = next((lane for lane in self.lanes if lane.match is None and lane.accepts(body)), None)
        if chosen is None:
            if tool_names(body):
                self._problem(f"agent request matched no lane: {last_user_text(body)[:200]!r}")
            return None, None, Text(self.side_reply)
        turn = model_turns(body)
        steps = self._steps[chosen.name]
        if turn >= len(steps):
            self._problem(f"lane {chosen.name!r} exhausted at step {turn}")
            return chosen.name, turn, Text(self.exhausted_text)
        step = steps[turn]
        try:
            for _ in range(10):  # a callable may return another callable
                if not callable(step):
                    break
                step = step(body)
        except Exception as exc:  # noqa: BLE001 - a broken script callable: answer, and let the test see it
            self._problem(f"lane {chosen.name!r} step {turn}: script error {exc!r}")
            return chosen.name, turn, Text(f"(fake gemini: script error {exc!r})")
        if not isinstance(step, (Text, Calls)):
            self._problem(f"lane {chosen.name!r} step {turn}: bad step {step!r}")
            step = Text(self.exhausted_text)
        return chosen.name, turn, step

    def response_for(self, step: Text | Calls | dict, body: dict, model: str | None) -> dict:
        """The GenerateContentResponse (non-streaming shape) for a step, or for a JSON side reply."""
        n = next(self._ids)
        parts: list[dict] = []
        if isinstance(step, dict):
            parts.append({"text": json.dumps(step)})
        elif isinstance(step, Text):
            parts.append({"text": step.text})
        else:
            if step.text:
                parts.append({"text": step.text})
            for name, args in step.calls:
                parts.append({"functionCall": {"name": name, "args": args}})
        prompt_tokens = count_tokens(body)
        out_tokens = max(1, len(json.dumps(parts)) // 4)
        return {
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": out_tokens,
                "totalTokenCount": prompt_tokens + out_tokens,
            },  # fmt: skip
            "modelVersion": model or "gemini-fake",
            "responseId": f"fake-{n:04d}",
        }

    def sse_for(self, response: dict) -> bytes:
        """The `alt=sse` event stream for `response`: a leading text part in chunks, then one last event with the
        rest of the parts, finishReason and usageMetadata."""
        candidate = response["candidates"][0]
        parts = list(candidate["content"]["parts"])
        events: list[dict] = []
        if parts and "text" in parts[0]:
            pieces = chunks(parts[0]["text"], self.chunk_size)
            for piece in pieces[:-1]:
                chunk = {"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}
                events.append({"candidates": [chunk], "modelVersion": response["modelVersion"],
                               "responseId": response["responseId"]})  # fmt: skip
            parts[0] = {"text": pieces[-1]}
        events.append(dict(response, candidates=[dict(candidate, content={"role": "model", "parts": parts})]))
        return b"".join(f"data: {json.dumps(event)}\r\n\r\n".encode() for event in events)


def _sample(schema: Any) -> Any:
    """A minimal value that satisfies a (simple) JSON schema: what a side request with a response schema gets."""
    if not isinstance(schema, dict):
        return {}
    if "enum" in schema and schema["enum"]:
        return "user" if "user" in schema["enum"] else schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return _sample(schema[key][0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = (kind or ("object" if "properties" in schema else "object")).lower()
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: _sample(sub) for name, sub in props.items()}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return "ok"


def _normalise(script) -> list[Lane]:
    if script is None:
        return [Lane("main", [])]
    if isinstance(script, dict):
        return [Lane(name, list(steps)) if name == "main" else Lane(name, list(steps), match=name)
                for name, steps in script.items()]  # fmt: skip
    items = list(script)
    if items and all(isinstance(item, Lane) for item in items):
        if sum(1 for lane in items if lane.match is None) > 1:
            raise ValueError("at most one lane may have no `match` (the default lane)")
        return items
    if any(isinstance(item, Lane) for item in items):
        raise ValueError("a script is either a list of Lane objects or a list of steps (for the main lane)")
    return [Lane("main", items)]


def _split_path(path: str) -> tuple[str | None, str | None]:
    """`/v1beta/models/gemini-x:streamGenerateContent` -> ("gemini-x", "streamGenerateContent")."""
    tail = path.rsplit("/", 1)[-1]
    if ":" not in tail:
        return None, None
    model, action = tail.split(":", 1)
    return model, action


def _make_handler(server: FakeGemini):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeGemini/1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _json(self, status: int, data: Any) -> None:
            self._send(status, json.dumps(data).encode())

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw) if raw else None
            except ValueError:
                return raw.decode("utf-8", "replace")

        def _not_found(self, method: str, path: str, body: Any = None) -> None:
            server._log(Record(method, path, None, None, None, None, body, time=time.time()))
            self._json(404, {"error": {"code": 404, "message": f"fake gemini: no {method} {path}",
                                       "status": "NOT_FOUND"}})  # fmt: skip

        def do_GET(self) -> None:
            path = urlparse(self.path).path
            if path.rstrip("/").endswith("/models"):
                server._log(Record("GET", path, "listModels", None, None, None, None, time=time.time()))
                self._json(200, {"models": []})
            else:
                self._not_found("GET", path)

        def do_POST(self) -> None:
            parsed = urlparse(self.path)
            path = parsed.path
            body = self._body()
            model, action = _split_path(path)
            if action is None or not isinstance(body, dict):
                self._not_found("POST", path, body)
                return
            record = Record("POST", path, action, model, None, None, body, time=time.time())
            if action == "countTokens":
                record.reply = {"totalTokens": count_tokens(body)}
                server._log(record)
                self._json(200, record.reply)
                return
            if action in ("embedContent", "batchEmbedContents"):
                record.reply = {"embedding": {"values": [0.0, 0.0, 0.0]}} if action == "embedContent" else {
                    "embeddings": [{"values": [0.0, 0.0, 0.0]} for _ in body.get("requests") or []]}  # fmt: skip
                server._log(record)
                self._json(200, record.reply)
                return
            if action not in GENERATE_ACTIONS:
                self._not_found("POST", path, body)
                return
            try:
                lane, turn, step = server.route(body)
            except Exception as exc:  # noqa: BLE001 - a bug in routing: answer, and let the test see it
                server._problem(f"route error: {exc!r}")
                lane, turn, step = None, None, Text(f"(fake gemini: route error {exc!r})")
            record.lane, record.turn = lane, turn
            response = server.response_for(step, body, model)
            record.reply = response
            server._log(record)
            if action == "streamGenerateContent" or "sse" in parse_qs(parsed.query).get("alt", []):
                self._send(200, server.sse_for(response), "text/event-stream")
            else:
                self._json(200, response)

    return Handler
