"""The hook edge: read a CLI's tool-hook payload, run the gate (pre) or the tracker (post), answer both CLIs.

Imports only the standard library and hypervisor's light core, and is started with `python -S`: a hook runs on
every tool call, so its start-up time is the agent's time. In a project that does not use hypervisor (no task
root, no .hypervisor.yaml, no HYPERVISOR_TASKS) it does nothing and says nothing.
"""

from __future__ import annotations

import os
import sys

from ..claims import workers
from ..claims.backend import resolve_backend
from ..claims.records import state_dir
from ..core import lightjson, rules
from ..core.config import load_config, resolve_task_root
from ..core.errors import HypervisorError
from . import gate, tracker
from .payload import ToolCall, parse, read_payload

TYPE_CHECKING = False  # typing costs a hook 4 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TextIO


AGENT_TOOL = "Agent"
PULL_COMMANDS = ("/hypervisor:pull", "/pull")  # `/pull` alone may be another plugin's: only for our worker


def context_for(call: ToolCall, env: Mapping[str, str]) -> gate.HookContext | None:
    """The project folder, task state folder and gate mode for a call: HYPERVISOR_TASKS > .hypervisor.yaml > ./tasks.

    None where the project does not use hypervisor: no HYPERVISOR_TASKS, no .hypervisor.yaml, no task root."""
    project = env.get("GEMINI_PROJECT_DIR" if call.host == "gemini" else "CLAUDE_PROJECT_DIR") or call.cwd
    config = load_config(start=project)
    root = resolve_task_root(None, config, env, base=project)
    if not env.get("HYPERVISOR_TASKS") and config.path is None and not os.path.isdir(root):
        return None
    return gate.HookContext(project, state_dir(root), config.gate, resolve_backend(None, config.backend, env))


def pulled_task(tool_input: dict) -> tuple[str, str, str] | None:
    """(command, task id, the text after it) of an Agent prompt starting `/hypervisor:pull <id>`, or None.

    `/pull <id>` counts only for a `hypervisor:worker`; an id the task-id rule refuses leaves the prompt alone."""
    prompt = tool_input.get("prompt")
    if not isinstance(prompt, str):
        return None
    text = prompt.lstrip()
    for command in PULL_COMMANDS:
        if command == "/pull" and tool_input.get("subagent_type") != workers.WORKER_AGENT_TYPE:
            continue
        rest = text[len(command) :]
        if text.startswith(command) and rest[:1].isspace():
            words = rest.split(None, 1)
            if words and rules.is_task_id(words[0]):
                return command, words[0], words[1].strip() if len(words) > 1 else ""
    return None


def pull_prompt(command: str, task_id: str, extra: str) -> str:
    """What a worker started by `/hypervisor:pull <id>` reads instead: Agent prompts are not expanded as commands."""
    claim = gate.CLAIM_TOOL["claude"]
    text = (
        f"Your task is {task_id} (the user asked for it with `{command} {task_id}`). Claim exactly that task: "
        f'call {claim} with task_id "{task_id}", then work only on task {task_id} and never claim another. '
        f'If that tool is not loaded yet, call ToolSearch with query "select:{claim}" first.'
    )
    return text + ("\n\n" + extra if extra else "")


def agent_answer(call: ToolCall) -> dict | None:
    """The Agent call's tool_input with a `/hypervisor:pull <id>` prompt spelled out, as a PreToolUse answer."""
    pulled = pulled_task(call.tool_input)
    if pulled is None:
        return None
    updated = {**call.tool_input, "prompt": pull_prompt(*pulled)}
    return {"hookSpecificOutput": {"hookEventName": call.event, "permissionDecision": "allow",
                                   "updatedInput": updated}}  # fmt: skip


def answer(call: ToolCall, verdict: gate.Verdict) -> dict | None:
    """The JSON to print: a deny both CLIs honour (Gemini reads `decision`, Claude `permissionDecision`)."""
    if verdict.action == "deny":
        return {
            "decision": "block",
            "reason": verdict.reason,
            "hookSpecificOutput": {
                "hookEventName": call.event,
                "permissionDecision": "deny",
                "permissionDecisionReason": verdict.reason,
            },
        }
    if verdict.action == "warn":
        return {
            "systemMessage": verdict.reason,
            "hookSpecificOutput": {"hookEventName": call.event, "additionalContext": verdict.reason},
        }
    return None


def run(stdin, stdout: TextIO, stderr: TextIO, env: Mapping[str, str]) -> int:
    """One hook invocation. Always exits 0: a deny is JSON on stdout; anything unreadable is let through."""
    try:
        call = parse(read_payload(stdin), env)
        if call.phase == "pre" and call.host == "claude" and call.tool == AGENT_TOOL:
            output = agent_answer(call)
            if output is not None:
                stdout.write(lightjson.dumps(output) + "\n")
            return 0
        context = context_for(call, env)
        if context is None:
            return 0
        if call.phase == "pre":
            verdict = gate.check(call, env, context)
            if verdict.action == "warn":
                stderr.write(verdict.reason + "\n")
            output = answer(call, verdict)
            if output is not None:
                stdout.write(lightjson.dumps(output) + "\n")
        else:
            tracker.track(call, env, context)
    except HypervisorError as error:
        stderr.write(f"hypervisor hook: {_one_line(error)}; the call goes ahead unchecked\n")
    except OSError as error:
        stderr.write(f"hypervisor hook: cannot use the task state: {_one_line(error)}; the call goes ahead unchecked\n")
    except Exception as error:  # noqa: BLE001 - a hook must never break the agent's session
        stderr.write(
            f"hypervisor hook: internal error {type(error).__name__}: {_one_line(error)}; "
            "the call goes ahead unchecked\n"
        )
    return 0


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def main() -> int:
    try:
        return run(sys.stdin.buffer, sys.stdout, sys.stderr, os.environ)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
