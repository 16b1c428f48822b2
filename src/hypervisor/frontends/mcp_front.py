"""The MCP server's stdio front: answers the handshake at once, starts the real server behind it, relays the rest.

Claude Code gives a plugin's server about 8 s before its first model request and 30 s in all; importing the `mcp`
SDK takes 1-3.5 s, and a first start after install has to install the dependencies first (tens of seconds). So
this front, standard library only, answers `server/discover`, `initialize`, `ping` and the list requests itself
from answers recorded from the real server (mcp_handshake.json, kept equal to it by a test), while the real server
(`python -m hypervisor mcp`) starts, or its dependencies install, in the background. Every other message goes to
the real server once it is up, and its messages come back unchanged; a tool call made before then waits for it.
If the real server cannot start, or stops, each call is answered with a tool error that says why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from . import launcher, mcp_handshake

FRONT_ID = "hypervisor-front-initialize"
ANSWERED_HERE = {"server/discover", "initialize", "ping", *mcp_handshake.LISTS}
MAX_STARTS = 3


class Front:
    """One client connection: the handshake answered here, everything else relayed to the real server."""

    def __init__(self, root: str, args: list[str], env: dict, out) -> None:
        self.root, self.args, self.env = root, args, env
        self.out = out
        self.recorded = mcp_handshake.load()["versions"]
        self.version = mcp_handshake.HANDSHAKE_VERSIONS[0]
        self.write_lock = threading.Lock()
        self.relay_lock = threading.Lock()
        self.state = threading.Condition()
        self.client_init: dict | None = None
        self.child: subprocess.Popen | None = None
        self.ready = False
        self.failure: str | None = None
        self.pending: list[dict] = []
        self.in_flight: dict = {}  # JSON of the id -> the request, for requests relayed and not yet answered
        self.closed = False
        self.starts = 0
        self.trace_path = env.get("HYPERVISOR_MCP_TRACE")

    # -- to the client ----------------------------------------------------------------------------------------
    def send(self, message: dict) -> None:
        self.send_line(encode(message))

    def trace(self, event: str, detail) -> None:
        """With HYPERVISOR_MCP_TRACE=FILE, one JSON line per message in and out (for bench/ and debugging)."""
        if self.trace_path:
            import time

            with open(self.trace_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"t": time.time(), "pid": os.getpid(), event: detail}) + "\n")

    def send_line(self, line: bytes) -> None:
        if self.trace_path:
            self.trace("sent", line[:80].decode("utf-8", "replace"))
        with self.write_lock:
            try:
                self.out.write(line)
                self.out.flush()
            except (BrokenPipeError, ValueError):
                pass

    def answer_here(self, message: dict) -> None:
        method = message["method"]
        if method == "initialize":
            asked = (message.get("params") or {}).get("protocolVersion")
            self.version = asked if asked in self.recorded else mcp_handshake.HANDSHAKE_VERSIONS[0]
            with self.state:
                self.client_init = message.get("params") or {}
                self.state.notify_all()
        if method == "ping":
            reply = {"result": {}}
        else:
            reply = self.recorded[self.version].get(method) or {
                "error": {"code": -32601, "message": "Method not found", "data": method}
            }
        if "id" in message:
            self.send({"jsonrpc": "2.0", "id": message["id"], **reply})

    def answer_failure(self, message: dict, reason: str) -> None:
        if "id" not in message or "method" not in message:
            return
        if message["method"] == "tools/call":
            reply = {"result": {"content": [{"type": "text", "text": reason}], "isError": True}}
        else:
            reply = {"error": {"code": -32603, "message": reason}}
        self.send({"jsonrpc": "2.0", "id": message["id"], **reply})

    # -- from the client --------------------------------------------------------------------------------------
    def receive(self, line: bytes) -> None:
        if self.trace_path:
            self.trace("received", line[:80].decode("utf-8", "replace"))
        try:
            message = json.loads(line)
        except ValueError:
            self.send({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}})
            return
        if isinstance(message, dict) and message.get("method") in ANSWERED_HERE:
            self.answer_here(message)
            return
        if isinstance(message, dict) and message.get("method") == "notifications/initialized":
            return  # the front sent the real server its own
        try:
            encode(message)
        except UnicodeEncodeError as error:  # "\ud800": JSON can spell it, UTF-8 cannot, the real server drops it
            bad = error.object[error.start : error.end]
            self.answer_failure(message, f"the request holds {bad!r}, a lone surrogate, which is not a character: "
                                         "send the arguments as valid Unicode text")  # fmt: skip
            return
        # The write to the real server happens outside self.state: the thread relaying its answers takes
        # self.state (forget), so a full pipe must not block while holding it. self.relay_lock keeps the order.
        with self.relay_lock:
            with self.state:
                if not self.ready:
                    if self.failure is None:
                        self.pending.append(message)
                        return
                    failure = self.failure
                else:
                    failure, child = None, self.child
                    self.track(message)
            if failure is None:
                self.relay(child, message)
            else:
                self.answer_failure(message, failure)

    def track(self, message) -> None:
        """Note a request as in flight (called with self.state held)."""
        if isinstance(message, dict) and "id" in message and "method" in message:
            self.in_flight[json.dumps(message["id"])] = message

    def relay(self, child: subprocess.Popen, message) -> None:
        """Send one message on to the real server (called with self.relay_lock held, self.state not)."""
        try:
            child.stdin.write(encode(message))
            child.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the reader sees the exit and answers what is in flight

    # -- the real server --------------------------------------------------------------------------------------
    def start_backend(self) -> None:
        thread = threading.Thread(target=self.run_backend, name="hypervisor-backend", daemon=True)
        thread.start()

    def run_backend(self) -> None:
        while True:
            try:
                stopped = self.serve_once()
            except Exception as error:  # noqa: BLE001 - every failure becomes an answer the model can read
                stopped = (f"hypervisor's task server could not start: {' '.join(str(error).split())}. "
                           "Tell the user; they can see the details with `claude --debug` or in the MCP log.")  # fmt: skip
            with self.state:
                if self.closed:
                    return
                self.ready = False
                orphans = list(self.in_flight.values())
                self.in_flight.clear()
                if self.starts < MAX_STARTS:
                    reason = f"{stopped} Call the tool again: it is restarted."
                else:
                    reason = self.failure = f"{stopped} It was started {MAX_STARTS} times; restart the session."
                    orphans += self.pending
                    self.pending.clear()
            for message in orphans:
                self.answer_failure(message, reason)
            if self.failure is not None:
                return

    def serve_once(self) -> str:
        """Start the real server, hand it the client's initialize, relay until it exits; why it stopped."""
        self.starts += 1
        python = launcher.python_for(self.root, self.env)
        with self.state:
            while self.client_init is None and not self.closed:
                self.state.wait()
            if self.closed:
                return "closed"
            params = self.client_init
        child = subprocess.Popen([python, "-m", "hypervisor", "mcp", *self.args], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, env=launcher.child_env(self.root, self.env))  # fmt: skip
        self.child = child
        init = {"jsonrpc": "2.0", "id": FRONT_ID, "method": "initialize", "params": params}
        child.stdin.write(encode(init))
        child.stdin.flush()
        for line in child.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            if isinstance(reply, dict) and reply.get("id") == FRONT_ID:
                if "error" in reply:
                    raise RuntimeError(f"the real server refused initialize: {reply['error']}")
                break
        else:
            return self.stopped(child)
        child.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        child.stdin.flush()
        with self.relay_lock:
            with self.state:
                self.ready = True
                queued, self.pending = self.pending, []
                for message in queued:
                    self.track(message)
            for message in queued:
                self.relay(child, message)
        self.compile_in_background(python)
        for line in child.stdout:
            self.forget(line)
            self.send_line(line if line.endswith(b"\n") else line + b"\n")
        return self.stopped(child)

    def forget(self, line: bytes) -> None:
        """Drop a relayed request from in_flight once the real server answers it."""
        try:
            message = json.loads(line)
        except ValueError:
            return
        if isinstance(message, dict) and "method" not in message and "id" in message:
            with self.state:
                self.in_flight.pop(json.dumps(message["id"]), None)

    def stopped(self, child: subprocess.Popen) -> str:
        code = child.wait()
        return (f"hypervisor's task server stopped (exit {code}) before answering; its error is in the MCP "
                "server's log (`claude --debug`).")  # fmt: skip

    def compile_in_background(self, python: str) -> None:
        """Bytecode for the package, so later hooks and starts skip compiling (PYTHONDONTWRITEBYTECODE or not)."""
        try:
            subprocess.Popen([python, "-c", "from hypervisor.core import bytecode; bytecode.compile_package()"],
                             env=launcher.child_env(self.root, self.env), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        except OSError:
            pass

    def close(self) -> None:
        with self.state:
            self.closed = True
            self.state.notify_all()
            child = self.child
        if child is not None and child.poll() is None:
            try:
                child.stdin.close()
            except OSError:
                pass
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.terminate()


def encode(message) -> bytes:
    """One JSON-RPC message as a line of the stdio transport."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def main(root: str, args: list[str]) -> None:
    """Serve on this process's stdin and stdout until the client closes stdin."""
    front = Front(root, args, dict(os.environ), sys.stdout.buffer)
    front.start_backend()
    try:
        for line in sys.stdin.buffer:
            if line.strip():
                front.receive(line)
    except KeyboardInterrupt:
        pass
    finally:
        front.close()
