"""Time from spawning the MCP server until it is connected as Claude Code sees it, beside a bare interpreter start.

Claude Code 2.1.328 opens with `server/discover`, then `initialize`, `notifications/initialized` and `tools/list`,
`prompts/list`, `resources/list` together, and counts the server connected once all three are answered
(../shared/reference/claude-code.md, addendum); it waits about 8 s for an alwaysLoad server before its first
model request. This script plays exactly that opening against each variant, a fresh process each time,
interleaved round-robin in one run so drift hits them alike, with PYTHONDONTWRITEBYTECODE=1 as on CI:

  bare         `python3 -c pass` (spawn to exit)
  front warm   `python3 -S scripts/launch.py mcp` (.mcp.json's command), bytecode present, dependencies ready
  front cold   the same from a fresh copy of the plugin files with no __pycache__ anywhere (first start after
               install), dependencies ready; the copy is re-made before each run
  front, no dependencies
               a fresh copy with no dependencies anywhere: the handshake is answered while the first start
               installs them in the background (that install is stopped after each run, so it never finishes)
  sdk direct   the real server alone (`python -m hypervisor mcp`, what .mcp.json ran before the front), warm
and, for the warm front and the direct server, the time until the first tool call (list_tasks) is answered.
Prints medians and each variant's ratio to bare; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import ForeignLoad, emit, source_fingerprint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = sys.executable
BARE_PYTHON = getattr(sys, "_base_executable", sys.executable)
OPENING = [
    {"jsonrpc": "2.0", "id": "server-discover-probe-1", "method": "server/discover",
     "params": {"protocolVersion": "2026-07-28"}},
    {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"roots": {}}, "clientInfo": {"name": "bench", "version": "0"}}},
]  # fmt: skip
LISTS = [{"jsonrpc": "2.0", "id": n, "method": m, "params": {}}
         for n, m in enumerate(("tools/list", "prompts/list", "resources/list"), 1)]  # fmt: skip
CALL = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "list_tasks", "arguments": {}}}


def fresh_plugin(folder: str) -> str:
    """A copy of the plugin files as `claude plugin install` leaves them: no .venv, no bytecode."""
    plugin = os.path.join(folder, f"plugin-{time.monotonic_ns()}")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("scripts", "src"):
        shutil.copytree(os.path.join(REPO, name), os.path.join(plugin, name), ignore=ignore)
    for name in ("pyproject.toml", "requirements.lock"):
        shutil.copy(os.path.join(REPO, name), plugin)
    return plugin


def connect(argv: list[str], env: dict, cwd: str, call: bool) -> tuple[float, float | None]:
    """Spawn, play Claude Code's opening; seconds until the three lists are answered (and the tool call)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=cwd,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip

    def send(message: dict) -> None:
        process.stdin.write((json.dumps(message) + "\n").encode())
        process.stdin.flush()

    def wait_for(wanted) -> None:
        while True:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"{argv} closed its output")
            if json.loads(line).get("id") == wanted:
                return

    try:
        send(OPENING[0])
        wait_for(OPENING[0]["id"])
        send(OPENING[1])
        wait_for(0)
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        for message in LISTS:
            send(message)
        for message in LISTS:
            wait_for(message["id"])
        connected = time.perf_counter() - started
        answered = None
        if call:
            send(CALL)
            wait_for(CALL["id"])
            answered = time.perf_counter() - started
        return connected, answered
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        _stop_detached_builds(env)


def _stop_detached_builds(env: dict) -> None:
    """The first start's dependency install runs in a session of its own: stop any this run started."""
    data = env.get("CLAUDE_PLUGIN_DATA")
    if not data:
        return
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if f"CLAUDE_PLUGIN_DATA={data}".encode() in handle.read().split(b"\0"):
                    os.killpg(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def bare(env: dict, cwd: str) -> tuple[float, None]:
    started = time.perf_counter()
    subprocess.run([BARE_PYTHON, "-c", "pass"], env=env, cwd=cwd, check=True)
    return time.perf_counter() - started, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print the report as JSON (the table on stderr)")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="bench-mcp-")
    project = os.path.join(scratch, "project")
    os.makedirs(os.path.join(project, "tasks"))
    with open(os.path.join(project, "tasks", "t1.md"), "w") as handle:
        handle.write("---\ntitle: One\nstatus: active\n---\nBody.\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERVISOR_", "CLAUDE_"))}
    base["PYTHONDONTWRITEBYTECODE"] = "1"
    warm_plugin = fresh_plugin(scratch)
    compiled = dict(base, PYTHONPATH=os.path.join(warm_plugin, "src"))
    subprocess.run([VENV_PYTHON, "-c", "import compileall, py_compile, sys; compileall.compile_dir(sys.argv[1], "
                    "quiet=1, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)",
                    os.path.join(warm_plugin, "src")], check=True, env=compiled)  # fmt: skip
    ready = dict(base, HYPERVISOR_PYTHON=VENV_PYTHON)

    def front(plugin: str) -> list[str]:
        return [BARE_PYTHON, "-S", os.path.join(plugin, "scripts", "launch.py"), "mcp"]

    variants = {
        "bare": lambda: bare(base, project),
        "front warm": lambda: connect(front(warm_plugin), ready, project, call=True),
        "front cold": lambda: connect(front(fresh_plugin(scratch)), ready, project, call=True),
        "front, no dependencies": lambda: connect(
            front(fresh_plugin(scratch)), dict(base, CLAUDE_PLUGIN_DATA=tempfile.mkdtemp(dir=scratch)), project,
            call=False),
        "sdk direct": lambda: connect([VENV_PYTHON, "-m", "hypervisor", "mcp"], compiled, project, call=True),
    }  # fmt: skip
    connected = {name: [] for name in variants}
    answered = {name: [] for name in variants}
    load = ForeignLoad()
    for _ in range(args.rounds):
        for name, run in variants.items():
            first, call = run()
            connected[name].append(first)
            if call is not None:
                answered[name].append(call)
    foreign = load.stop()
    shutil.rmtree(scratch, ignore_errors=True)

    floor = statistics.median(connected["bare"])
    lines = [f"MCP server start, {args.rounds} rounds interleaved, PYTHONDONTWRITEBYTECODE=1 "
             f"(other load during the run: {foreign:.2f} CPU-s/s; source {source_fingerprint()})",
             f"{'variant':<26}{'connected':>11}{'x bare':>8}{'first call':>12}{'x bare':>8}"]  # fmt: skip
    report = {"rounds": args.rounds, "foreign_load": foreign, "variants": {}}
    for name in variants:
        median = statistics.median(connected[name])
        call = statistics.median(answered[name]) if answered[name] else None
        call_text = f"{call * 1000:>10.0f}ms{call / floor:>8.2f}" if call else f"{'-':>12}{'-':>8}"
        lines.append(f"{name:<26}{median * 1000:>9.0f}ms{median / floor:>8.2f}{call_text}")
        report["variants"][name] = {"connected_s": median, "connected_ratio": median / floor,
                                    "first_call_s": call, "first_call_ratio": call / floor if call else None}  # fmt: skip
    emit("\n".join(lines), report, args.json)


if __name__ == "__main__":
    main()
