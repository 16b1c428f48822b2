"""`<state>/board.json`: which board serves a task root (its URL and pid), for `hypervisor run` to point at it.

Standard library only: `hypervisor run` reads it without importing the web stack."""

from __future__ import annotations

import json
import os
import socket

BOARD_FILE = "board.json"


def board_file(state: str) -> str:
    return os.path.join(state, BOARD_FILE)


def announce(state: str, url: str) -> None:
    """Record this process as the task root's board (readable by the owner only: the URL may carry the token)."""
    path = board_file(state)
    tmp = f"{path}.{os.getpid()}.tmp"
    record = {"url": url, "pid": os.getpid(), "host": socket.gethostname()}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    os.replace(tmp, path)


def withdraw(state: str) -> None:
    """Remove the record if it is this process's (a later board may have replaced it)."""
    path = board_file(state)
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        if isinstance(record, dict) and record.get("pid") == os.getpid():
            os.unlink(path)
    except (OSError, ValueError):
        pass


def running_board(state: str) -> str | None:
    """The URL of the board serving this task root, if one runs (its pid is alive on this host), else None."""
    try:
        with open(board_file(state), encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("url"), str):
        return None
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return record["url"]
