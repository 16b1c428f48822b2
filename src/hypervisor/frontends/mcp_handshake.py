"""The MCP server's handshake answers, recorded from the real server so the front can give them at once.

`python -m hypervisor.frontends.mcp_handshake` records them into mcp_handshake.json (run it after changing a tool);
tests/test_mcp_front.py fails when the file and the real server disagree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mcp_handshake.json")
LISTS = ("tools/list", "prompts/list", "resources/list", "resources/templates/list")
# Offered in this order; the real server answers initialize with the version it agrees to.
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")


def load() -> dict:
    with open(PATH, encoding="utf-8") as handle:
        return json.load(handle)


def exchange(process: subprocess.Popen, message: dict) -> dict:
    process.stdin.write((json.dumps(message) + "\n").encode())
    process.stdin.flush()
    while True:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the server closed its output before answering {message['method']}")
        reply = json.loads(line)
        if reply.get("id") == message["id"]:
            return reply


def ask_real_server(python: str, version: str) -> dict:
    """The real server's answers to initialize (at `version`) and to each list request."""
    with tempfile.TemporaryDirectory() as folder:
        os.mkdir(os.path.join(folder, "tasks"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERVISOR_")}
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = src
        process = subprocess.Popen([python, "-m", "hypervisor", "mcp", "--tasks", os.path.join(folder, "tasks")],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=folder, env=env)  # fmt: skip
        try:
            params = {"protocolVersion": version, "capabilities": {},
                      "clientInfo": {"name": "hypervisor-recorder", "version": "0"}}  # fmt: skip
            discover = {"jsonrpc": "2.0", "id": "discover", "method": "server/discover",
                        "params": {"protocolVersion": "2026-07-28"}}  # fmt: skip
            answers = {"server/discover": exchange(process, discover)}
            answers["initialize"] = exchange(process, {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                                                       "params": params})  # fmt: skip
            process.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
            for number, method in enumerate(LISTS, 1):
                answers[method] = exchange(process, {"jsonrpc": "2.0", "id": number, "method": method, "params": {}})
            return answers
        finally:
            process.stdin.close()
            process.wait(timeout=30)


def record(python: str = sys.executable) -> dict:
    """Every answer the front gives, as the real server gives it, for each handshake protocol version."""
    by_version = {}
    for version in HANDSHAKE_VERSIONS:
        answers = ask_real_server(python, version)
        agreed = answers["initialize"].get("result", {}).get("protocolVersion")
        if agreed == version:
            by_version[version] = {method: {key: value for key, value in answer.items() if key in ("result", "error")}
                                   for method, answer in answers.items()}  # fmt: skip
    return {"generated_by": "python -m hypervisor.frontends.mcp_handshake", "versions": by_version}


def main() -> None:
    recorded = record()
    with open(PATH, "w", encoding="utf-8") as handle:
        json.dump(recorded, handle, indent=1, sort_keys=True)
        handle.write("\n")
    print(f"wrote {PATH}: {', '.join(recorded['versions'])}")


if __name__ == "__main__":
    main()
