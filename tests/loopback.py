"""What the scripted model servers (fake_model.py, fake_gemini.py) share: an HTTP server on 127.0.0.1:<free port>
run on a thread, used as a context manager, and the deterministic token count and chunking of their replies."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address) -> None:  # clients that hang up (timeouts, kills) are normal
        pass


class LoopbackServer:
    """Start on a free loopback port, serve on a daemon thread, stop on exit. Subclasses give `handler()`."""

    thread_name = "loopback-server"
    _httpd: ThreadingHTTPServer | None = None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self):
        self._httpd = _QuietServer(("127.0.0.1", 0), self.handler())
        threading.Thread(target=self._httpd.serve_forever, name=self.thread_name, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The base URL to give the CLI (ANTHROPIC_BASE_URL, GOOGLE_GEMINI_BASE_URL)."""
        return f"http://127.0.0.1:{self.port}"


def count_tokens(body: Any) -> int:
    """A rough, deterministic token count (4 characters a token)."""
    return max(1, len(json.dumps(body)) // 4)


def chunks(value: str, size: int) -> list[str]:
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]
