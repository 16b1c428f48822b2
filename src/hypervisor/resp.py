"""A minimal stdlib Redis client (RESP2 over TCP or a unix socket) for hooks, which cannot afford redis-py's
165 ms import on every tool call; everything else talks to Redis through redis-py."""

from __future__ import annotations

import _socket  # the C module: `socket` itself builds enum classes at import, about 8 ms a hook

from .errors import BackendError

TIMEOUT_SECONDS = 5.0


class ReplyError(Exception):
    """An error reply from the server (`-ERR ...`, `-NOSCRIPT ...`)."""


class Connection:
    """One connection; `call(*args)` sends a command and returns its reply as bytes, int, list or None."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, db: int = 0, username: str | None = None,
                 password: str | None = None, unix_path: str | None = None) -> None:  # fmt: skip
        where = unix_path or f"{host}:{port}"
        try:
            self._sock = _connect(unix_path) if unix_path else _connect_tcp(host, port)
        except OSError as error:
            raise BackendError(f"cannot reach Redis at {where}: {error}") from None
        self._buffer = b""
        self.where = where
        if password is not None:
            self.call("AUTH", *([username] if username else []), password)
        if db:
            self.call("SELECT", str(db))

    def call(self, *args: str | bytes | int | float) -> object:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        try:
            self._sock.sendall(b"".join(parts))
            return self._reply()
        except OSError as error:
            raise BackendError(f"Redis at {self.where} stopped answering: {error}") from None

    def close(self) -> None:
        self._sock.close()

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._fill()
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise OSError("connection closed")
        self._buffer += chunk

    def _reply(self) -> object:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise ReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self._buffer) < size + 2:
                self._fill()
            data, self._buffer = self._buffer[:size], self._buffer[size + 2 :]
            return data
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise OSError(f"unexpected reply {line[:40]!r}")


def _connect(address: object, family: int = _socket.AF_UNIX) -> _socket.socket:
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT_SECONDS)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _connect_tcp(host: str, port: int) -> _socket.socket:
    """What socket.create_connection does: try each address the name resolves to, keep the first that answers."""
    error: OSError = OSError(f"{host} resolves to no address")
    name = host.encode() if host.isascii() else host  # a str name loads the idna codec, and with it `re` (10 ms)
    for family, _, _, _, address in _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM):
        try:
            sock = _connect(address, family)
        except OSError as failed:
            error = failed
            continue
        if family in (_socket.AF_INET, _socket.AF_INET6):
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        return sock
    raise error
