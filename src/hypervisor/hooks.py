"""The hook edge: read a CLI's tool-hook payload, run the gate (pre) or the tracker (post), answer both CLIs.

Imports only the standard library and hypervisor's light core, and is started with `python -S`: a hook runs on
every tool call, so its start-up time is the agent's time.
"""

from __future__ import annotations

import os
import sys

from . import gate, lightjson, tracker
from .claims import state_dir
from .claimstore import resolve_backend
from .config import load_config, resolve_task_root
from .errors import HypervisorError
from .hookinput import ToolCall, parse, read_payload

TYPE_CHECKING = False  # typing costs a hook 4 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Mapping, TextIO


def context_for(call: ToolCall, env: Mapping[str, str]) -> gate.HookContext:
    """The project folder, task state folder and gate mode for a call: HYPERVISOR_TASKS > .hypervisor.yaml > ./tasks."""
    project = env.get("GEMINI_PROJECT_DIR" if call.host == "gemini" else "CLAUDE_PROJECT_DIR") or call.cwd
    config = load_config(start=project)
    state = state_dir(resolve_task_root(None, config, env, base=project))
    return gate.HookContext(project, state, config.gate, resolve_backend(None, config.backend, env))


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
        context = context_for(call, env)
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
        stderr.write(f"hypervisor hook: internal error {type(error).__name__}: {_one_line(error)}; "
                     "the call goes ahead unchecked\n")
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
