"""Fuzz the real tool hook: over a thousand malformed, odd and hostile payloads fed to `python3 -S hooks/tool_hook.py`.

The contract every payload is held to (test_hook_contract):
  * exit code 0, within the timeout (no hang);
  * stdout empty, or exactly one JSON object; a deny has decision "block", a non-empty reason and
    hookSpecificOutput.permissionDecision "deny"; a rewrite (permissionDecision "allow" with updatedInput) answers
    only an Agent call's PreToolUse and keeps all of its tool_input but the prompt;
  * no Python traceback on stderr;
  * a payload the hook cannot read says so on stderr, on a line starting "hypervisor hook:".
Across all payloads, nothing under a task root outside `.hypervisor/` (nor anywhere else in the fuzz projects) changes.

Beyond the contract:
  * test_hook_does_not_crash: no "internal error" (the hook's catch-all for exceptions it did not expect);
  * test_gate_fails_closed: where the answer is known (an unbound worker editing, a bound worker editing outside its
    task's scope, a worker whose binding or claim record is corrupt, an Agent prompt `/hypervisor:pull <id>`), a
    readable payload gets that answer.

The payloads are generated systematically (events x tools, fields x bad values, paths x hosts x workers,
tool_response shapes, project variants) plus seeded random ones; they run in a 2-thread pool against one set of
projects built once for the module."""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, write_task

from hypervisor.claims.workers import Worker

HOOK = [sys.executable, "-S", str(REPO / "hooks" / "tool_hook.py")]
HOOK_TIMEOUT = 30.0  # seconds; hooks.json gives the CLI 10 s, a stuck hook is a hang either way
MAX_PAYLOAD = 64 * 1024 * 1024
WORKER_TYPE = "hypervisor:worker"
CLAUDE_CLAIM = "mcp__plugin_hypervisor_task_manager__claim_next_task"
GEMINI_CLAIM = "mcp_task_manager_claim_next_task"
EVENTS = ("PreToolUse", "PostToolUse", "PostToolUseFailure", "BeforeTool", "AfterTool")
PHASES = {"PreToolUse": "pre", "BeforeTool": "pre", "PostToolUse": "post", "PostToolUseFailure": "post",
          "AfterTool": "post"}  # fmt: skip
GEMINI_EVENTS = {"BeforeTool", "AfterTool"}
GEMINI_TOOLS = {"write_file": "Write", "replace": "Edit"}
EDIT_FIELD = {"Write": "file_path", "Edit": "file_path", "MultiEdit": "file_path", "NotebookEdit": "notebook_path"}

# Placeholders in payloads, replaced once the projects exist (tmp paths hold no JSON-special characters).
MAIN = "@MAIN@"  # the healthy project; its task t1 (scope src/**) and t2 (no scope) are claimed
TOKEN1, TOKEN2 = "@TOKEN1@", "@TOKEN2@"


def worker_key(session_id: str, agent_id: str) -> str:
    """The binding file name hypervisor gives a worker."""
    return Worker(session_id, agent_id).key


# Worker identities (session_id, agent_id). Only the fuzz payloads that name them can change their bindings.
SCOPED = ("sess-scoped", "agent-scoped")  # bound to t1 (scope src/**); used ONLY by pre-phase cases: stays bound
FUZZ = ("sess-fuzz", "agent-fuzz")  # bound to t1 at setup; fuzz post cases may rebind or unbind it
GEM = ("sess-gemini", "")  # a Gemini session bound to t2 through AfterTool
HOLDER = ("sess-holder", "agent-holder")  # bound to t2; only post calls of non-claiming tools: stays bound
PLAIN = ("sess-plain", "")  # never bound
# Identities bound to corrupt records in the `corrupt` project.
BAD_BINDINGS = {
    "garbage": b"\xff\xfe{not json",
    "list": b"[1, 2, 3]\n",
    "int-id": b'{"task_id": 5, "token": "x"}\n',
    "dotdot-id": b'{"task_id": "../../etc", "token": "x"}\n',
    "claim-garbage": None,  # bound (validly) to t1, whose claim record is garbage
    "claim-wrong-types": None,  # bound to t2, whose claim record has wrong-typed fields
    "claim-bad-previous": None,  # bound with a stale token to t3, whose claim record's `previous` is a string
    "lock-is-dir": None,  # bound to t4, whose lock file is a directory
    "binding-is-dir": None,  # its binding file is a directory
}


def ident(name: str) -> tuple[str, str]:
    return (f"sess-{name}", f"agent-{name}")


# ---------------------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------------------
class Case:
    """One hook invocation: stdin (JSON-able object or raw bytes or a builder), project, env, expectations."""

    def __init__(self, name: str, payload: object = None, raw: bytes | None = None,
                 build: Callable[[], bytes] | None = None, project: str = "main", env: dict | None = None,
                 worker_env: bool | None = None, expect: str | None = None) -> None:  # fmt: skip
        self.name = name
        self.payload = payload
        self.raw = raw
        self.build = build
        self.project = project
        self.env = env or {}
        self.worker_env = worker_env  # None: alternate by position, so half the cases run with HYPERVISOR_WORKER=1
        self.expect = expect  # "deny", "allow" or "warn" where the right answer is known

    def stdin(self, world: World) -> bytes:
        if self.build is not None:
            return self.build()
        data = self.raw if self.raw is not None else json.dumps(self.payload).encode()
        return world.substitute(data)


def call(event: str, tool: str, tool_input: object = None, who: tuple[str, str] = FUZZ, agent_type: str = WORKER_TYPE,
         cwd: str = MAIN, **extra: object) -> dict:  # fmt: skip
    payload: dict = {"session_id": who[0], "transcript_path": "/tmp/none.jsonl", "cwd": cwd, "hook_event_name": event,
                     "tool_name": tool, "tool_input": {} if tool_input is None else tool_input}  # fmt: skip
    if who[1]:
        payload["agent_id"] = who[1]
    if agent_type:
        payload["agent_type"] = agent_type
    payload.update(extra)
    return payload


def claim_response_claude(task_id: str = "t1", token: str = TOKEN1) -> str:
    return json.dumps({"id": task_id, "title": task_id, "status": "in_progress", "claim_token": token})


def templates() -> list[tuple[str, dict]]:
    """Well-formed payloads of every shape both CLIs send, to mutate."""
    write = {"file_path": f"{MAIN}/src/new.py", "content": "print('hi')\n"}
    claim_text = claim_response_claude()
    gem_claim = [{"text": f"<untrusted_context>\n{claim_response_claude('t2', TOKEN2)}\n</untrusted_context>"}]
    return [
        ("claude-pre-write", call("PreToolUse", "Write", write)),
        ("claude-pre-edit", call("PreToolUse", "Edit", {"file_path": "src/a.py", "old_string": "a",
                                                        "new_string": "b"})),
        ("claude-pre-multiedit", call("PreToolUse", "MultiEdit", {"file_path": "src/a.py", "edits": []})),
        ("claude-pre-notebook", call("PreToolUse", "NotebookEdit", {"notebook_path": "src/n.ipynb", "new_source": ""})),
        ("claude-post-write", call("PostToolUse", "Write", write, tool_response={"type": "create", "filePath": "x"},
                                   tool_use_id="toolu_1", duration_ms=3)),  # fmt: skip
        ("claude-post-failure", call("PostToolUseFailure", "Bash", {"command": "false"}, error="Exit code 1")),
        ("claude-post-claim", call("PostToolUse", CLAUDE_CLAIM, {"caller": "w"}, tool_response=claim_text,
                                   mcp_server={"name": "plugin:hypervisor:task_manager", "source": "plugin"})),
        ("claude-post-update", call("PostToolUse", "mcp__plugin_hypervisor_task_manager__update_task",
                                    {"id": "t1"}, tool_response=claim_text)),  # fmt: skip
        ("gemini-pre-write", call("BeforeTool", "write_file", {"file_path": "src/g.py", "content": "x"}, who=GEM,
                                  agent_type="", timestamp="2026-01-01T00:00:00Z")),  # fmt: skip
        ("gemini-pre-replace", call("BeforeTool", "replace", {"file_path": "src/a.py", "old_string": "a",
                                                              "new_string": "b", "instruction": "x"}, who=GEM,
                                    agent_type="")),  # fmt: skip
        ("gemini-post-write", call("AfterTool", "write_file", {"file_path": "src/g.py", "content": "x"}, who=GEM,
                                   agent_type="",
                                   tool_response={"llmContent": "Successfully wrote", "returnDisplay": {}})),
        ("gemini-post-claim", call("AfterTool", GEMINI_CLAIM, {}, who=GEM, agent_type="",
                                   tool_response={"llmContent": gem_claim, "returnDisplay": "ok"},
                                   mcp_context={"server_name": "task_manager", "tool_name": "claim_next_task"})),
        ("gemini-post-error", call("AfterTool", "replace", {"file_path": "src/a.py"}, who=GEM, agent_type="",
                                   tool_response={"llmContent": "no match", "error": {"message": "x", "type": "y"}})),
    ]  # fmt: skip


BAD_VALUES: list[tuple[str, object]] = [
    ("null", None), ("zero", 0), ("int", 7), ("float", 1.5), ("true", True), ("false", False), ("empty", ""),
    ("nul", "\x00"), ("nul-inside", "ab\x00cd"), ("list", []), ("list1", ["x"]), ("dict", {}), ("dict1", {"a": 1}),
    ("long", "x" * 20000), ("surrogate", "\ud800"), ("unicode", "é𝄞\u202e\ufeff"), ("newline", "a\nb"),
    ("huge-int", 10**40), ("space", " "),
]  # fmt: skip
FIELDS = ("hook_event_name", "tool_name", "tool_input", "cwd", "session_id", "agent_id", "agent_type", "tool_response",
          "mcp_server", "mcp_context")  # fmt: skip


def field_mutation_cases() -> list[Case]:
    """Every field x every bad value (and missing), on two templates the field matters to."""
    by_name = dict(templates())
    targets = {
        "tool_response": ("claude-post-claim", "gemini-post-claim"),
        "mcp_server": ("claude-post-claim", "claude-pre-write"),
        "mcp_context": ("gemini-post-claim", "gemini-pre-write"),
    }
    cases = []
    for field in FIELDS:
        pair = targets.get(field, ("claude-pre-write", "gemini-post-claim"))
        for value_name, value in [("missing", ...), *BAD_VALUES]:
            for template in pair:
                payload = json.loads(json.dumps(by_name[template]))
                if value is ...:
                    payload.pop(field, None)
                else:
                    payload[field] = value
                cases.append(Case(f"field-{field}-{value_name}-{template}", payload))
    # tool_input's own fields: the path field of each edit tool, wrong
    for template in ("claude-pre-write", "claude-pre-notebook", "gemini-pre-replace", "claude-post-write"):
        field = "notebook_path" if "notebook" in template else "file_path"
        for value_name, value in [("missing", ...), *BAD_VALUES]:
            payload = json.loads(json.dumps(by_name[template]))
            if value is ...:
                payload["tool_input"].pop(field, None)
            else:
                payload["tool_input"][field] = value
            cases.append(Case(f"input-{field}-{value_name}-{template}", payload))
    return cases


EVENT_SPELLINGS = [*EVENTS, "pretooluse", "PreToolUse ", "Notification", "SessionStart", "PostToolBatch",
                   "BeforeAgent", "AfterModel", "Stop", "PreToolUse\n", "BEFORETOOL"]  # fmt: skip
TOOL_SPELLINGS = [
    "Write", "Edit", "MultiEdit", "NotebookEdit", "Bash", "Read", "write_file", "replace", "run_shell_command",
    "FooBar", "mcp__", "mcp__x", "mcp____", "mcp__a__", "mcp_task_manager_", CLAUDE_CLAIM, GEMINI_CLAIM,
    "mcp__plugin_hypervisor_task_manager__complete_task", "mcp__task_manager__claim_next_task", "write", "Write ",
]  # fmt: skip


def event_tool_cases() -> list[Case]:
    """Both CLIs' event and tool spellings (and wrong ones) crossed, with relative paths as Gemini sends them."""
    cases = []
    for event in EVENT_SPELLINGS:
        for tool in TOOL_SPELLINGS:
            tool_input = {"file_path": "src/et.py", "notebook_path": "src/et.ipynb", "content": "x"}
            extra = {}
            if PHASES.get(event) == "post":
                extra["tool_response"] = claim_response_claude("t1", "0" * 32)  # a wrong token for t1
            cases.append(Case(f"event-{event!r}-tool-{tool!r}", call(event, tool, tool_input, **extra)))
    return cases


# (path, inside t1's scope src/** when resolved against the main project?)
PATHS: list[tuple[str, bool | None]] = [
    ("src/new.py", True), ("src/a.py", True), ("./src/b.py", True), ("src//c.py", True), ("src/./d.py", True),
    ("src/sub/../e.py", True), (f"{MAIN}/src/abs.py", True), (f"{MAIN}/tasks/../src/f.py", True),
    ("src/x.py/", True), ("src/\udc80.py", True), ("src/line\nbreak.py", True), ("src/" + "a" * 300 + ".py", True),
    ("src/" + "d/" * 2500 + "deep.py", True), ("src/sp ace.py", True),
    ("src/\ud800.py", True),  # a lone surrogate: not encodable as a file name
    ("src", None), ("src/../README.md", False), ("README.md", False), ("../outside.txt", False),
    ("../../etc/passwd", False), ("/etc/passwd", False), (f"{MAIN}/../other/x", False), ("tasks/t1.md", False),
    ("tasks/.hypervisor/claims/t1.json", False), ("tasks/.hypervisor/workers/x.json", False),
    ("src/link/passwd", False), ("~/x", False), ("..", False), (".", False), ("/", False), ("//etc//shadow", False),
    ("C:\\Windows\\x", False), ("src\\win.py", False),
]  # fmt: skip


def path_cases() -> list[Case]:
    """Paths x both hosts x (scope-bound worker, unbound worker, non-worker), each with its known answer."""
    cases = []
    for index, (path, in_scope) in enumerate(PATHS):
        for host in ("claude", "gemini"):
            event, tool = ("PreToolUse", "Write") if host == "claude" else ("BeforeTool", "write_file")
            tool_input = {"file_path": path, "content": "x"}
            label = f"path-{host}-{path[:40]!r}"
            cases.append(Case(f"{label}-scoped", call(event, tool, tool_input, who=SCOPED),
                              expect=None if in_scope is None else ("allow" if in_scope else "deny")))  # fmt: skip
            unbound = ident(f"unbound-{host}-{index}")
            cases.append(Case(f"{label}-unbound", call(event, tool, tool_input, who=unbound), expect="deny"))
            cases.append(Case(f"{label}-unbound-env", call(event, tool, tool_input, who=unbound, agent_type=""),
                              worker_env=True, expect="deny"))  # fmt: skip
            cases.append(Case(f"{label}-nonworker", call(event, tool, tool_input, who=PLAIN, agent_type="Explore"),
                              worker_env=False, expect="allow"))  # fmt: skip
    return cases


def response_cases() -> list[Case]:
    """tool_response shapes of the claim tools: real, wrapped, garbage, fake tokens, ids that could name paths."""
    real1, real2 = claim_response_claude(), claim_response_claude("t2", TOKEN2)
    shapes: list[tuple[str, object]] = [
        ("string", real1), ("string-in-prose", f"claimed: {real1} -- go"), ("parts", [{"text": real1}]),
        ("parts-split", [{"text": real1[:20]}, {"text": real1[20:]}]), ("parts-bad", [{"text": 5}, "x", None, {}]),
        ("llm-string", {"llmContent": real2}), ("llm-parts", {"llmContent": [{"text": real2}]}),
        ("llm-null", {"llmContent": None}), ("llm-int", {"llmContent": 3}),
        ("dict-direct", {"id": "t1", "claim_token": TOKEN1}),
        ("fake-task", claim_response_claude("no-such-task", "f" * 32)),
        ("dotdot-id", claim_response_claude("../../etc", "a" * 32)),
        ("slash-id", claim_response_claude("a/b", "a" * 32)), ("nul-id", claim_response_claude("t1\x00x", TOKEN1)),
        ("int-id", json.dumps({"id": 5, "claim_token": "x"})),
        ("int-token", json.dumps({"id": "t1", "claim_token": 5})),
        ("list-json", "[1, 2]"), ("brace-only", "{"), ("reversed-braces", "} {"), ("two-objects", real1 + real1),
        ("deep-string", "[" * 5000 + "]" * 5000), ("deep-object", '{"a":' * 5000 + "1" + "}" * 5000),
        ("empty-token", claim_response_claude("t1", "")), ("long-token", claim_response_claude("t1", "z" * 100000)),
        ("surrogate-token", claim_response_claude("t1", "\ud800")), ("error-dict", {"error": "boom", "id": "t1"}),
        ("null", None), ("number", 42), ("bool", True),
    ]  # fmt: skip
    cases = []
    for shape, response in shapes:
        for host in ("claude", "gemini"):
            if host == "claude":
                payload = call("PostToolUse", CLAUDE_CLAIM, {}, who=ident(f"resp-{shape}"), tool_response=response)
            else:
                payload = call("AfterTool", GEMINI_CLAIM, {}, who=ident(f"resp-g-{shape}"), agent_type="",
                               tool_response=response)  # fmt: skip
            cases.append(Case(f"response-{host}-{shape}", payload))
    # the holder's own post calls (renewal + journal) with odd responses
    for shape, response in shapes[:8]:
        cases.append(Case(f"response-holder-{shape}", call("PostToolUse", "Write", {"file_path": "src/h.py"},
                                                           who=HOLDER, tool_response=response)))  # fmt: skip
    return cases


def project_cases() -> list[Case]:
    """Broken settings, missing or odd task roots, corrupt state: a handful of payloads against each."""
    cases = []
    plain_projects = ["gate_all", "gate_warn", "gate_off", "yaml_syntax", "yaml_badgate", "yaml_unknown", "yaml_binary",
                      "yaml_list", "yaml_flow", "yaml_tasks_missing", "yaml_is_dir", "no_root", "state_is_file",
                      "state_dirs_are_files", "corrupt"]  # fmt: skip
    # no_root has no task root, no settings and no HYPERVISOR_TASKS: a project that does not use hypervisor,
    # where the hooks stay out of the way
    expect_unbound = {"gate_all": "deny", "gate_warn": "warn", "gate_off": "allow", "yaml_flow": "deny",
                      "yaml_tasks_missing": "deny", "yaml_is_dir": "deny", "no_root": "allow", "corrupt": "deny",
                      "state_is_file": "deny", "state_dirs_are_files": "deny"}  # fmt: skip
    for project in plain_projects:
        p = f"@P:{project}@"
        unbound = ident(f"{project}-unbound")
        cases += [
            Case(f"project-{project}-pre-unbound", call("PreToolUse", "Write", {"file_path": f"{p}/src/x.py"},
                                                        who=unbound, cwd=p),
                 project=project, expect=expect_unbound.get(project)),
            Case(f"project-{project}-pre-nonworker", call("PreToolUse", "Edit", {"file_path": "src/x.py"}, who=PLAIN,
                                                          agent_type="", cwd=p), project=project, worker_env=False,
                 expect="deny" if project == "gate_all" else ("allow" if project in expect_unbound else None)),
            Case(f"project-{project}-gemini-pre", call("BeforeTool", "write_file", {"file_path": "src/g.py"},
                                                       who=ident(f"{project}-g"), agent_type="", cwd=p),
                 project=project, env={"GEMINI_PROJECT_DIR": p}),
            Case(f"project-{project}-post-claim", call("PostToolUse", CLAUDE_CLAIM, {}, who=ident(f"{project}-c"),
                                                       cwd=p, tool_response=claim_response_claude("t5", "c" * 32)),
                 project=project),
            Case(f"project-{project}-post-write", call("PostToolUse", "Write", {"file_path": "src/w.py"}, cwd=p,
                                                       tool_response={}), project=project),
        ]  # fmt: skip
    # env-selected roots, with the main project as cwd
    for name, root in (("env-root-missing", "@BASE@/missing-root/tasks"), ("env-root-file", "@MAIN@/README.md"),
                       ("env-root-relative", "tasks"), ("env-root-dotdot", "../../.."),
                       ("env-root-empty", "")):  # fmt: skip
        for payload in (call("PreToolUse", "Write", {"file_path": "src/x.py"}, who=ident(f"{name}-u")),
                        call("PostToolUse", CLAUDE_CLAIM, {}, who=ident(f"{name}-c"),
                             tool_response=claim_response_claude("t5", "d" * 32)),
                        call("PostToolUse", "Write", {"file_path": "src/x.py"}, tool_response={})):  # fmt: skip
            expect = "deny" if payload["hook_event_name"] == "PreToolUse" else None
            cases.append(Case(f"{name}-{payload['tool_name']}-{payload['hook_event_name']}", payload,
                              env={"HYPERVISOR_TASKS": root}, expect=expect))  # fmt: skip
    # project dir from the env that disagrees with the payload's cwd
    for env_name, event, tool in (
        ("CLAUDE_PROJECT_DIR", "PreToolUse", "Write"),
        ("GEMINI_PROJECT_DIR", "BeforeTool", "write_file"),
    ):
        for project_dir in ("@P:no_root@", "@BASE@/missing-project", "relative/dir", "/"):
            cases.append(Case(f"envdir-{env_name}-{project_dir}", call(event, tool, {"file_path": "src/x.py"},
                                                                         who=ident(f"envdir-{env_name}")),
                              env={env_name: project_dir}))  # fmt: skip
    # the corrupt project's bound workers: none but lock-is-dir (a valid claim; only its lock file is odd) holds a
    # usable claim, so none of the others may edit
    for name in BAD_BINDINGS:
        who = ident(f"corrupt-{name}")
        cases.append(Case(f"corrupt-binding-{name}-pre", call("PreToolUse", "Write", {"file_path": "src/x.py"}, who=who,
                                                              cwd="@P:corrupt@"), project="corrupt",
                          expect="allow" if name == "lock-is-dir" else "deny"))  # fmt: skip
        cases.append(Case(f"corrupt-binding-{name}-post", call("PostToolUse", "Bash", {"command": "ls"}, who=who,
                                                               cwd="@P:corrupt@", tool_response={"stdout": ""}),
                          project="corrupt"))  # fmt: skip
    return cases


AGENT_PROMPTS: list[tuple[str, object, object, str]] = [  # (name, prompt, subagent_type, expected verdict)
    ("pull", "/hypervisor:pull t1", WORKER_TYPE, "rewrite"), ("pull-short", "/pull t1", WORKER_TYPE, "rewrite"),
    ("pull-general", "/hypervisor:pull t1", "general-purpose", "rewrite"),
    ("pull-short-general", "/pull t1", "general-purpose", "allow"), ("pull-short-no-type", "/pull t1", ..., "allow"),
    ("pull-short-type-int", "/pull t1", 5, "allow"), ("pull-extra", "/hypervisor:pull t1 then run the tests",
                                                        WORKER_TYPE, "rewrite"),
    ("pull-leading-space", "  \n/hypervisor:pull t1", WORKER_TYPE, "rewrite"),
    ("pull-newline", "/hypervisor:pull\nt1\nmore", WORKER_TYPE, "rewrite"),
    ("pull-dotdot", "/hypervisor:pull ../../etc", WORKER_TYPE, "allow"),
    ("pull-dots", "/hypervisor:pull a..b", WORKER_TYPE, "allow"),
    ("pull-slash", "/hypervisor:pull a/b", WORKER_TYPE, "allow"),
    ("pull-no-id", "/hypervisor:pull", WORKER_TYPE, "allow"),
    ("pull-no-id-space", "/hypervisor:pull   ", WORKER_TYPE, "allow"),
    ("pull-glued", "/hypervisor:pullt1", WORKER_TYPE, "allow"), ("pull-comma", "/pull t1, t2", WORKER_TYPE, "allow"),
    ("pull-id-128", "/hypervisor:pull " + "a" * 128, WORKER_TYPE, "rewrite"),
    ("pull-id-129", "/hypervisor:pull " + "a" * 129, WORKER_TYPE, "allow"),
    ("pull-nul", "/hypervisor:pull t1\x00", WORKER_TYPE, "allow"),
    ("pull-surrogate-extra", "/hypervisor:pull t1 \ud800 \u202e", WORKER_TYPE, "rewrite"),
    ("pull-unicode-id", "/hypervisor:pull é1", WORKER_TYPE, "allow"),
    ("pull-huge-extra", "/hypervisor:pull t1 " + "x" * 1_000_000, WORKER_TYPE, "rewrite"),
    ("pull-mentioned", "please /hypervisor:pull t1", WORKER_TYPE, "allow"),
    ("pull-upper", "/HYPERVISOR:PULL t1", WORKER_TYPE, "allow"), ("plain", "Do task t1.", WORKER_TYPE, "allow"),
    ("prompt-int", 5, WORKER_TYPE, "allow"), ("prompt-null", None, WORKER_TYPE, "allow"),
    ("prompt-list", ["/hypervisor:pull t1"], WORKER_TYPE, "allow"), ("prompt-missing", ..., WORKER_TYPE, "allow"),
]  # fmt: skip


def agent_cases() -> list[Case]:
    """The Agent tool's PreToolUse: a `/hypervisor:pull <id>` prompt is spelled out, everything else left alone."""
    cases = []
    for name, prompt, subagent_type, expect in AGENT_PROMPTS:
        tool_input = {"description": "a worker", "run_in_background": False}
        if prompt is not ...:
            tool_input["prompt"] = prompt
        if subagent_type is not ...:
            tool_input["subagent_type"] = subagent_type
        cases.append(Case(f"agent-{name}", call("PreToolUse", "Agent", tool_input, who=PLAIN, agent_type=""),
                          expect=expect))  # fmt: skip
        if expect == "rewrite":  # from inside a subagent, in a project without hypervisor, and in the other phases
            cases.append(Case(f"agent-{name}-nested", call("PreToolUse", "Agent", tool_input), expect=expect))
            cases.append(Case(f"agent-{name}-no-root", call("PreToolUse", "Agent", tool_input, cwd="@P:no_root@"),
                              project="no_root", expect=expect))  # fmt: skip
            cases.append(Case(f"agent-{name}-post", call("PostToolUse", "Agent", tool_input, tool_response={}),
                              expect="allow"))  # fmt: skip
            cases.append(Case(f"agent-{name}-gemini", call("BeforeTool", "Agent", tool_input, who=GEM, agent_type=""),
                              expect="allow"))  # fmt: skip
    return cases


def raw_cases() -> list[Case]:
    """Bytes that are not a payload: empty, not JSON, cut short, not UTF-8, nested too deep, too big."""
    valid = json.dumps(call("PreToolUse", "Write", {"file_path": "src/t.py", "content": "x"})).encode()
    cases = [Case(f"raw-{name}", raw=data) for name, data in [
        ("empty", b""), ("space", b" "), ("whitespace", b" \n\t\r\n "), ("newline", b"\n"), ("not-json", b"hello"),
        ("yaml", b"hook_event_name: PreToolUse\ntool_name: Write\n"), ("single-quotes", b"{'a': 1}"),
        ("null", b"null"), ("zero", b"0"), ("negative", b"-1"), ("float-overflow", b"1e999"), ("true", b"true"),
        ("string", b'"PreToolUse"'), ("empty-array", b"[]"), ("array-of-payload", b"[" + valid + b"]"),
        ("empty-object", b"{}"), ("open-brace", b"{"), ("half-key", b'{"hook_event_name"'),
        ("invalid-utf8", b"\xff\xfe\xfd"), ("invalid-utf8-in-string", valid.replace(b"Write", b"Wr\xffite")),
        ("overlong-utf8", valid.replace(b"src", b"\xc0\xafsrc")), ("nul-byte", b"\x00"), ("nuls", b"\x00" * 64),
        ("nul-after", valid + b"\x00"), ("nul-before", b"\x00" + valid), ("bom-utf8", b"\xef\xbb\xbf" + valid),
        ("trailing-garbage", valid + b"garbage"), ("two-objects", valid + valid), ("two-lines", valid + b"\n" + valid),
        ("nan", valid.replace(b'"content": "x"', b'"content": NaN')),
        ("infinity", valid.replace(b'"content": "x"', b'"content": -Infinity')),
        ("duplicate-keys", valid[:-1] + b', "hook_event_name": "Stop"}'),
        ("raw-control-char", valid.replace(b"src/t.py", b"src/\x01t.py")),
        ("escaped-nul-path", valid.replace(b"src/t.py", b"src/\\u0000t.py")),
        ("lone-surrogate-escape", valid.replace(b"src/t.py", b"src/\\udfff.py")),
        ("bad-escape", valid.replace(b"src/t.py", b"src\\q")),
        ("deep-array", b"[" * 100000), ("deep-array-closed", b"[" * 100000 + b"]" * 100000),
        ("deep-object", b'{"a":' * 100000),
        ("deep-in-tool-input", valid.replace(b'"x"', b"[" * 100000 + b"]" * 100000)),
        ("nested-900", valid.replace(b'"x"', b"[" * 900 + b"]" * 900)),
    ]]  # fmt: skip
    for cut in sorted(
        {1, 2, 5, 10, 17, 30, 50, 80, 100, 120, 150, 180, 200, len(valid) // 2, len(valid) - 2, len(valid) - 1}
    ):
        cases.append(Case(f"raw-truncated-at-{cut}", raw=valid[:cut]))

    for codec in ("utf-16", "utf-32", "utf-16-be"):  # json.loads(bytes) reads UTF-16/32 too (utf-16-be: no BOM)
        cases.append(Case(f"raw-{codec}", build=lambda codec=codec: WORLD.substitute(valid).decode().encode(codec)))

    def big_write() -> bytes:  # a 20 MB Write by the bound worker, inside its scope
        payload = call(
            "PreToolUse", "Write", {"file_path": f"{WORLD.main}/src/big.py", "content": "@C@"}, cwd=WORLD.main
        )
        return json.dumps(payload).encode().replace(b"@C@", b"x" * (20 * 1024 * 1024))

    def over_limit() -> bytes:  # one byte past hypervisor's 64 MiB limit, still well-formed JSON
        head = json.dumps(
            call("PreToolUse", "Write", {"file_path": f"{WORLD.main}/src/big.py", "content": "@C@"}, cwd=WORLD.main)
        )
        head_bytes = head.encode()
        return head_bytes.replace(b"@C@", b"y" * (MAX_PAYLOAD + 1 - (len(head_bytes) - 3)))

    cases.append(Case("raw-20MB-write", build=big_write, expect="allow"))
    cases.append(Case("raw-over-64MiB-write", build=over_limit))
    return cases


def random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**63, -(2**70), rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1e308, 3.14, rng.random()])
    if kind in (4, 5):
        return random_text(rng)
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = list(FIELDS) + ["file_path", "text", "llmContent", "id", "claim_token", "name", "server_name"]
    return {rng.choice(keys) if rng.random() < 0.6 else random_text(rng): random_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}  # fmt: skip


def random_text(rng: random.Random) -> str:
    alphabet = ("abcXYZ019 ./-_:\\\"'{}[]\n\t\x00\x7f\u00e9\u2028\u202e\ufeff\ufffd\U0001d11e\udc80\ud800"
                "mcp__task_manager") + "".join(EVENTS)  # fmt: skip
    text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 24)))
    if rng.random() < 0.3:
        prefixes = [*EVENTS, *TOOL_SPELLINGS, "src/r.py", "../r.py", f"{MAIN}/src/r.py", "t1", TOKEN1]
        text = rng.choice(prefixes) + text[:3]
    return text


def random_cases(seed: int = 20260101, count: int = 160) -> list[Case]:
    rng = random.Random(seed)
    base = templates()
    cases = []
    for i in range(count):
        mode = i % 4
        name, template = rng.choice(base)
        payload = json.loads(json.dumps(template))
        if mode == 0:  # mutate fields of a real payload
            for _ in range(rng.randrange(1, 5)):
                op = rng.randrange(4)
                if op == 0:
                    payload.pop(rng.choice(FIELDS), None)
                elif op == 1:
                    payload[rng.choice(FIELDS)] = random_value(rng)
                elif op == 2 and isinstance(payload.get("tool_input"), dict):
                    payload["tool_input"][rng.choice(["file_path", "notebook_path", "content"])] = random_value(rng)
                else:
                    payload[random_text(rng)] = random_value(rng)
            cases.append(Case(f"random-{i}-fields-{name}", payload))
        elif mode == 1:  # byte-level damage to a real payload
            data = bytearray(json.dumps(payload).encode())
            for _ in range(rng.randrange(1, 4)):
                op, at = rng.randrange(4), rng.randrange(len(data))
                if op == 0:
                    data[at] = rng.randrange(256)
                elif op == 1:
                    del data[at : at + rng.randrange(1, 20)]
                elif op == 2:
                    data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
                else:
                    del data[at:]
                    if not data:
                        break
            cases.append(Case(f"random-{i}-bytes-{name}", raw=bytes(data)))
        elif mode == 2:  # token soup
            tokens = ["{", "}", "[", "]", ":", ",", '"', "null", "1", '"hook_event_name"', '"PreToolUse"',
                      '"tool_name"',
                      '"Write"', '"tool_input"', '"file_path"', '"src/x.py"', " ", "\\", "\\u0000", "\xff"]  # fmt: skip
            text = "".join(rng.choice(tokens) for _ in range(rng.randrange(0, 40)))
            cases.append(Case(f"random-{i}-soup", raw=text.encode("utf-8", "surrogatepass")))
        else:  # a random object mixing real field names and random values
            obj = {key: random_value(rng) for key in rng.sample(FIELDS, rng.randrange(len(FIELDS)))}
            obj.setdefault("hook_event_name", rng.choice(EVENTS))
            obj.setdefault("tool_name", rng.choice(TOOL_SPELLINGS))
            cases.append(Case(f"random-{i}-object", obj))
    return cases


def all_cases() -> list[Case]:
    cases = raw_cases() + field_mutation_cases() + event_tool_cases() + path_cases() + response_cases() \
        + project_cases() + agent_cases() + random_cases()  # fmt: skip
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    for index, case in enumerate(cases):
        if case.worker_env is None:
            case.worker_env = index % 2 == 0
    return cases


CASES = all_cases()


# ---------------------------------------------------------------------------------------------------------------
# The projects
# ---------------------------------------------------------------------------------------------------------------
class World:
    """The fuzz projects under one temp folder, their tokens, and the environment hooks run in."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.main = str(base / "main")
        self.tokens: dict[str, str] = {}
        self.projects: dict[str, str] = {"main": self.main}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERVISOR_", "CLAUDE_", "GEMINI_"))}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(base.parent / "pycache")  # keep .pyc out of the repo, but cached
        self.env = env

    def substitute(self, data: bytes) -> bytes:
        data = data.replace(b"@MAIN@", self.main.encode()).replace(b"@BASE@", str(self.base).encode())
        data = data.replace(b"@TOKEN1@", self.tokens.get("t1", "").encode())
        data = data.replace(b"@TOKEN2@", self.tokens.get("t2", "").encode())
        for name, path in self.projects.items():
            data = data.replace(f"@P:{name}@".encode(), path.encode())
        return data

    def hook(self, stdin: bytes, cwd: str, env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = {**self.env, **(env or {})}
        return subprocess.run(HOOK, input=stdin, cwd=cwd, env=full_env, capture_output=True, timeout=HOOK_TIMEOUT)

    def cli(self, *args: str, cwd: str) -> dict:
        result = subprocess.run([sys.executable, "-m", "hypervisor", *args, "--json"], cwd=cwd, env=self.env,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return json.loads(result.stdout)

    def bind(self, project: str, who: tuple[str, str], task_id: str, token: str) -> None:
        """Bind `who` to a claim the way a CLI does: the hook sees the claim tool's PostToolUse."""
        payload = call("PostToolUse", CLAUDE_CLAIM, {}, who=who, cwd=project,
                       tool_response=claim_response_claude(task_id, token))  # fmt: skip
        result = self.hook(json.dumps(payload).encode(), cwd=project)
        assert result.returncode == 0 and not result.stdout and not result.stderr, result
        binding = Path(project, "tasks", ".hypervisor", "workers", worker_key(*who) + ".json")
        assert json.loads(binding.read_text())["token"] == token


def make_store(project: Path) -> Path:
    root = project / "tasks"
    write_task(root, "t1", title="Scoped task", status="active", priority=0, scope=["src/**"])
    write_task(root, "t2", title="Unscoped task", status="active", priority=1)
    for task_id in ("t3", "t4", "t5"):
        write_task(root, task_id, status="active", priority=2)
    (project / "src").mkdir(parents=True, exist_ok=True)
    (project / "src" / "a.py").write_text("a = 1\n")
    (project / "README.md").write_text("readme\n")
    return root


def build_world(base: Path) -> World:
    world = World(base)
    main = base / "main"
    make_store(main)
    (main / "src" / "link").symlink_to("/etc")
    for task_id in ("t1", "t2"):
        world.tokens[task_id] = world.cli("claim", task_id, "--caller", "fuzz-supervisor", "--tasks", "tasks",
                                          cwd=world.main)["claim_token"]  # fmt: skip
    world.bind(world.main, SCOPED, "t1", world.tokens["t1"])
    world.bind(world.main, FUZZ, "t1", world.tokens["t1"])
    world.bind(world.main, HOLDER, "t2", world.tokens["t2"])
    gem = call("AfterTool", GEMINI_CLAIM, {}, who=GEM, agent_type="", cwd=world.main,
               tool_response={"llmContent": [{"text": claim_response_claude("t2", world.tokens["t2"])}]})  # fmt: skip
    result = world.hook(json.dumps(gem).encode(), cwd=world.main)
    assert result.returncode == 0 and not result.stderr, result
    assert (main / "tasks" / ".hypervisor" / "workers" / (worker_key(*GEM) + ".json")).is_file()

    settings = {
        "gate_all": b"gate: all\n", "gate_warn": b"gate: warn\n", "gate_off": b"gate: off\n",
        "yaml_syntax": b"gate: [block\ntasks: tasks\n", "yaml_badgate": b"gate: sometimes\n",
        "yaml_unknown": b"colour: blue\n", "yaml_binary": b"\xff\xfe\x00gate: \x80\x81\n", "yaml_list": b"- a\n- b\n",
        "yaml_flow": b"{gate: block, tasks: tasks}\n", "yaml_tasks_missing": b"tasks: no/such/root\n",
    }  # fmt: skip
    for name, text in settings.items():
        project = base / name
        make_store(project)
        (project / ".hypervisor.yaml").write_bytes(text)
        world.projects[name] = str(project)
        if name in ("gate_all", "gate_warn", "gate_off", "yaml_flow"):
            world.cli("claim", "t1", "--caller", "c", "--tasks", "tasks", cwd=str(project))
    (base / "yaml_is_dir" / ".hypervisor.yaml").mkdir(parents=True)
    make_store(base / "yaml_is_dir")
    world.projects["yaml_is_dir"] = str(base / "yaml_is_dir")
    (base / "no_root" / "src").mkdir(parents=True)
    world.projects["no_root"] = str(base / "no_root")
    make_store(base / "state_is_file")
    (base / "state_is_file" / "tasks" / ".hypervisor").write_text("not a folder\n")
    world.projects["state_is_file"] = str(base / "state_is_file")
    odd = base / "state_dirs_are_files"
    make_store(odd)
    world.cli("claim", "t1", "--caller", "c", "--tasks", "tasks", cwd=str(odd))
    for sub in ("workers", "journal"):
        (odd / "tasks" / ".hypervisor" / sub).write_text("a file where a folder belongs\n")
    world.projects["state_dirs_are_files"] = str(odd)
    build_corrupt(world, base / "corrupt")
    (base / "missing-root").mkdir()  # its tasks/ must not appear
    return world


def build_corrupt(world: World, project: Path) -> None:
    """A store whose bindings and claim records are damaged in every way the hook reads them."""
    make_store(project)
    world.projects["corrupt"] = str(project)
    tokens = {t: world.cli("claim", t, "--caller", "c", "--tasks", "tasks", cwd=str(project))["claim_token"]
              for t in ("t1", "t2", "t3", "t4")}  # fmt: skip
    state = project / "tasks" / ".hypervisor"
    world.bind(str(project), ident("corrupt-claim-garbage"), "t1", tokens["t1"])
    world.bind(str(project), ident("corrupt-claim-wrong-types"), "t2", tokens["t2"])
    stale = {"task_id": "t3", "token": "0" * 32, "session_id": "", "agent_id": "", "agent_type": ""}  # a stale token
    (state / "workers" / (worker_key(*ident("corrupt-claim-bad-previous")) + ".json")).write_text(json.dumps(stale))
    world.bind(str(project), ident("corrupt-lock-is-dir"), "t4", tokens["t4"])
    (state / "claims" / "t1.json").write_bytes(b'{"task_id": "t1", "token": ')
    wrong = json.loads((state / "claims" / "t2.json").read_text())
    wrong.update(lease_seconds="forever", lease_expires_at="never", claimed_at=[], scope=[1, None, "src/**"],
                 previous="nope")  # fmt: skip
    (state / "claims" / "t2.json").write_text(json.dumps(wrong))
    bad_previous = json.loads((state / "claims" / "t3.json").read_text())
    bad_previous["previous"] = "nope"
    (state / "claims" / "t3.json").write_text(json.dumps(bad_previous))
    lock = state / "locks" / "t4.lock"
    lock.unlink()
    lock.mkdir()
    for name, data in BAD_BINDINGS.items():
        path = state / "workers" / (worker_key(*ident(f"corrupt-{name}")) + ".json")
        if data is not None:
            path.write_bytes(data)
    (state / "workers" / (worker_key(*ident("corrupt-binding-is-dir")) + ".json")).mkdir()


def snapshot(base: Path) -> dict[str, object]:
    """Every path under `base` (but inside .hypervisor/ folders) with its bytes, link target or 'dir'."""
    seen: dict[str, object] = {}
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d != ".hypervisor")
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, base)
            if name == ".hypervisor":  # a .hypervisor that is a plain file: its bytes are the hook's business
                seen[rel] = "state"
            elif os.path.islink(path):
                seen[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                seen[rel] = "dir"
            else:
                with open(path, "rb") as handle:
                    seen[rel] = handle.read()
    return seen


# ---------------------------------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------------------------------
class Result:
    def __init__(self, case: Case, stdin: bytes, proc: subprocess.CompletedProcess | None, seconds: float,
                 hang: bool = False) -> None:  # fmt: skip
        self.case = case
        self.stdin_size = len(stdin)
        self.stdin_head = stdin[:300]
        self.unreadable = unreadable(stdin, case, WORLD)
        self.proc = proc
        self.seconds = seconds
        self.hang = hang
        self.stdout = proc.stdout.decode("utf-8", "replace") if proc else ""
        self.stderr = proc.stderr.decode("utf-8", "replace") if proc else ""

    def describe(self) -> str:
        rc = self.proc.returncode if self.proc else "TIMEOUT"
        return (f"case {self.case.name} (project {self.case.project}, HYPERVISOR_WORKER="
                f"{'1' if self.case.worker_env else 'unset'}, env {self.case.env})\n"
                f"  stdin ({self.stdin_size} bytes): {self.stdin_head!r}\n"
                f"  exit {rc} after {self.seconds:.2f}s\n  stdout: {self.stdout[:600]!r}\n"
                f"  stderr: {self.stderr[:900]!r}")  # fmt: skip

    @property
    def verdict(self) -> str:
        """allow / deny / warn, from stdout."""
        if not self.stdout.strip():
            return "allow"
        try:
            output = json.loads(self.stdout)
        except ValueError:
            return "garbage"
        if not isinstance(output, dict):
            return "garbage"
        specific = output.get("hookSpecificOutput")
        if output.get("decision") == "block" or (
            isinstance(specific, dict) and specific.get("permissionDecision") == "deny"
        ):
            return "deny"
        if isinstance(specific, dict) and specific.get("permissionDecision") == "allow" \
                and isinstance(specific.get("updatedInput"), dict):  # fmt: skip
            return "rewrite"
        return "warn" if output.get("systemMessage") else "other"


def unreadable(raw: bytes, case: Case, world: World) -> bool:
    """Whether a payload is one the hook cannot read (the spec of 'unreadable', from both CLIs' payload formats)."""
    if len(raw) > MAX_PAYLOAD:
        return True
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        return True
    if not isinstance(payload, dict):
        return True

    def text(key: str, required: bool = False) -> bool:  # a usable string field?
        value = payload.get(key)
        if value is None and not required:
            return True
        return isinstance(value, str) and "\0" not in value and (bool(value) or not required)

    event, tool = payload.get("hook_event_name"), payload.get("tool_name")
    if not text("hook_event_name", True) or event not in PHASES or not text("tool_name", True):
        return True
    if not isinstance(payload.get("tool_input", {}), dict):
        return True
    if not all(text(key) for key in ("cwd", "session_id", "agent_id", "agent_type")):
        return True
    env = {key: world.substitute(value.encode()).decode() for key, value in case.env.items()}
    cwd = payload.get("cwd") or env.get("GEMINI_CWD") or env.get("CLAUDE_PROJECT_DIR") or world.projects[case.project]
    if not os.path.isabs(cwd):
        return True
    name = GEMINI_TOOLS.get(tool, tool) if event in GEMINI_EVENTS else tool
    context = payload.get("mcp_context")
    if event in GEMINI_EVENTS and isinstance(context, dict) and isinstance(context.get("server_name"), str) \
            and isinstance(context.get("tool_name"), str):  # fmt: skip
        return False  # Gemini's own word that this is an MCP tool: not an edit, so no path to read
    if name in EDIT_FIELD:
        path = payload.get("tool_input", {}).get(EDIT_FIELD[name])
        if not isinstance(path, str) or not path or "\0" in path:
            return True
    return False


WORLD: World


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory) -> dict:
    global WORLD
    base = tmp_path_factory.mktemp("hookfuzz") / "projects"
    base.mkdir()
    WORLD = build_world(base)
    before = snapshot(base)
    started = time.monotonic()

    def run(case: Case) -> Result:
        stdin = case.stdin(WORLD)
        env = {key: WORLD.substitute(value.encode()).decode() for key, value in case.env.items()}
        if case.worker_env:
            env["HYPERVISOR_WORKER"] = "1"
        begin = time.monotonic()
        try:
            proc = WORLD.hook(stdin, cwd=WORLD.projects[case.project], env=env)
        except subprocess.TimeoutExpired:
            return Result(case, stdin, None, time.monotonic() - begin, hang=True)
        return Result(case, stdin, proc, time.monotonic() - begin)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = {result.case.name: result for result in pool.map(run, CASES)}
    elapsed = time.monotonic() - started
    return {"results": results, "before": before, "after": snapshot(base), "base": base, "seconds": elapsed}


# ---------------------------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------------------------
def contract_problems(result: Result) -> list[str]:
    problems = []
    if result.hang:
        return [f"hung (no exit within {HOOK_TIMEOUT:g} s)"]
    if result.proc.returncode != 0:
        problems.append(f"exit code {result.proc.returncode}")
    if "Traceback" in result.stderr:
        problems.append("a Python traceback on stderr")
    if result.stdout.strip():
        try:
            output = json.loads(result.stdout)
        except ValueError:
            output = None
            problems.append("stdout is not one JSON value")
        if output is not None and not isinstance(output, dict):
            problems.append(f"stdout is JSON {type(output).__name__}, not an object")
        if isinstance(output, dict) and result.verdict == "rewrite":
            problems += rewrite_problems(result, output)
        elif isinstance(output, dict):
            specific = output.get("hookSpecificOutput")
            denies = output.get("decision") is not None or (
                isinstance(specific, dict) and specific.get("permissionDecision") is not None
            )
            if denies and not (output.get("decision") == "block" and isinstance(specific, dict)
                               and specific.get("permissionDecision") == "deny"
                               and isinstance(output.get("reason"), str) and output["reason"].strip()):  # fmt: skip
                problems.append("a deny without decision 'block', permissionDecision 'deny' and a reason")
    if result.unreadable and not any(line.startswith("hypervisor hook:") for line in result.stderr.splitlines()):
        problems.append("an unreadable payload without a 'hypervisor hook:' line on stderr")
    return problems


def rewrite_problems(result: Result, output: dict) -> list[str]:
    """An Agent prompt rewrite: only for a PreToolUse Agent call, the whole tool_input kept but for its prompt,
    which names the pulled task and the claim tool."""
    payload = json.loads(result.case.stdin(WORLD))
    original, specific = payload["tool_input"], output["hookSpecificOutput"]
    updated = specific["updatedInput"]
    problems = []
    if (payload["hook_event_name"], payload["tool_name"]) != ("PreToolUse", "Agent"):
        problems.append("a rewrite of something other than an Agent call's PreToolUse")
    if set(output) != {"hookSpecificOutput"} or specific.get("hookEventName") != "PreToolUse":
        problems.append(f"a rewrite answer with the wrong fields: {sorted(output)}, {specific.get('hookEventName')}")
    if {k: v for k, v in updated.items() if k != "prompt"} != {k: v for k, v in original.items() if k != "prompt"}:
        problems.append("the rewrite changed tool_input beyond its prompt")
    task_id = original["prompt"].split()[1]
    if not isinstance(updated.get("prompt"), str) or f'task_id "{task_id}"' not in updated["prompt"] \
            or CLAUDE_CLAIM not in updated["prompt"]:  # fmt: skip
        problems.append("the rewritten prompt does not name the task id and the claim tool")
    return problems


def _failures(fuzz, check) -> list[str]:
    failures = []
    for name, result in fuzz["results"].items():
        problem = check(result)
        if problem:
            failures.append(f"{name}: {problem}\n{result.describe()}")
    return failures


def test_hook_contract(fuzz):
    """Exit 0, nothing or one JSON object on stdout, a well-formed deny, no traceback, unreadable input explained."""
    failures = _failures(fuzz, lambda result: "; ".join(contract_problems(result)))
    assert not failures, f"{len(failures)} payloads broke the contract:\n" + "\n".join(failures[:10])


def test_hook_does_not_crash(fuzz):
    """'internal error' is the hook's catch-all for an exception it did not expect: a crash, caught."""
    failures = _failures(fuzz, lambda result: "crashed" if "internal error" in result.stderr else "")
    assert not failures, f"{len(failures)} payloads crashed the hook:\n" + "\n".join(failures[:10])


def test_gate_fails_closed(fuzz):
    """Where the right answer is known (no usable claim: deny; bound worker in scope: allow), the hook gives it.

    Unreadable payloads are let through by contract and are not counted here."""

    def check(result) -> str:
        if not result.case.expect or result.unreadable or result.verdict == result.case.expect:
            return ""
        return f"expected {result.case.expect}, got {result.verdict}"

    failures = _failures(fuzz, check)
    checked = sum(1 for r in fuzz["results"].values() if r.case.expect and not r.unreadable)
    assert checked >= 100, f"only {checked} payloads had a known right answer"
    assert not failures, f"{len(failures)} of {checked} verdicts were wrong:\n" + "\n".join(failures[:10])


def test_nothing_outside_state_changed(fuzz):
    before, after = fuzz["before"], fuzz["after"]
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"changed outside .hypervisor/: {changed[:20]}"
    assert not (fuzz["base"] / "missing-root" / "tasks").exists()
    assert not (fuzz["base"] / "missing-project").exists()


def test_gate_paths_were_hit(fuzz):
    """The fuzz is only worth something if it reached the gate's allow and deny and the tracker's binding."""
    results = fuzz["results"].values()
    verdicts = {v: sum(1 for r in results if r.verdict == v) for v in ("allow", "deny", "warn")}
    assert verdicts["deny"] >= 50 and verdicts["allow"] >= 50 and verdicts["warn"] >= 1, verdicts
    workers = Path(WORLD.main, "tasks", ".hypervisor", "workers")
    assert (workers / (worker_key(*SCOPED) + ".json")).is_file()
    journal = Path(WORLD.main, "tasks", ".hypervisor", "journal", f"t2.{WORLD.tokens['t2'][:16]}.jsonl")
    assert journal.read_text().count("\n") >= 8  # the holder's post calls were journaled (renewal + journal)


def test_payload_count(fuzz, capsys):
    results = fuzz["results"]
    unread = sum(1 for r in results.values() if r.unreadable)
    worker_env = sum(1 for r in results.values() if r.case.worker_env)
    summary = (f"{len(results)} payloads fed to the hook ({unread} unreadable, {worker_env} with HYPERVISOR_WORKER=1) "
               f"in {fuzz['seconds']:.1f} s")  # fmt: skip
    crashed = sum(1 for r in results.values() if "internal error" in r.stderr)
    summary += f"; {crashed} ended in the hook's catch-all ('internal error')"
    with capsys.disabled():
        print("\n" + summary)
    assert len(results) >= 200, summary
