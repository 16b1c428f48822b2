"""Starting the board: the address checks (loopback, or a token), the socket, uvicorn, board.json, Ctrl-C."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import sys
from typing import TYPE_CHECKING

from ...core.errors import UsageError
from . import registry

if TYPE_CHECKING:
    from ...claims.queue import TaskQueue

SHUTDOWN_GRACE_SECONDS = 3  # open event streams are closed after this long on Ctrl-C


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_address(host: str, token: str | None) -> None:
    """UsageError unless the board stays on this machine or has a token (the refusal offers one)."""
    if token is not None and len(token) < 8:
        raise UsageError(f"--token {token!r} is too short: use 8 characters or more, e.g. --token "
                         f"{secrets.token_urlsafe(16)}")  # fmt: skip
    if token is None and not is_loopback(host):
        raise UsageError(
            f"--host {host} would show every task to other machines without a password: give it a token, e.g. "
            f"`hypervisor board --host {host} --token {secrets.token_urlsafe(16)}` (the browser then opens the "
            "URL it prints once), or leave --host at 127.0.0.1"
        )


def open_socket(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: a free one); UsageError naming the address if it cannot be had."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as error:
        sock.close()
        hint = "pass another --port (or --port 0 for a free one)" if port else "check --host"
        raise UsageError(f"cannot serve the board on {host}:{port}: {error.strerror}; {hint}") from None
    sock.listen(128)
    return sock


def url_of(host: str, port: int) -> str:
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(queue: TaskQueue, host: str, port: int, token: str | None, out=None) -> None:
    """Serve the board until Ctrl-C (or SIGTERM); prints its URL once it answers."""
    import uvicorn

    from .app import build_app
    from .watch import Watcher

    out = out or sys.stdout
    check_address(host, token)
    queue.store.ensure_state()
    sock = open_socket(host, port)
    url = url_of(host, sock.getsockname()[1])
    shown = url + (f"?token={token}" if token else "")

    def ready() -> None:
        registry.announce(queue.store.state, shown)
        print(f"hypervisor board: {shown} (tasks in {queue.store.root}; Ctrl-C stops it)", file=out, flush=True)

    app = build_app(Watcher(queue), token, on_ready=ready, on_stop=lambda: registry.withdraw(queue.store.state))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS)  # fmt: skip
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then passed the Ctrl-C on
        pass
    finally:
        registry.withdraw(queue.store.state)
        sock.close()
    print("hypervisor board: stopped", file=out, flush=True)
