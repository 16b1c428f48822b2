"""A minimal stdlib Redis client (RESP2 over TCP, TLS or a unix socket) for hooks, which cannot afford redis-py's
165 ms import on every tool call; everything else talks to Redis through redis-py."""

from __future__ import annotations

import _socket  # the C module: `socket` itself builds enum classes at import, about 8 ms a hook

from ..core.errors import BackendError

TIMEOUT_SECONDS = 5.0


class ReplyError(Exception):
    """An error reply from the server (`-ERR ...`, `-NOSCRIPT ...`)."""


class Connection:
    """One connection; `call(*args)` sends a command and returns its reply as bytes, int, list or None."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, db: int = 0, username: str | None = None,
                 password: str | None = None, unix_path: str | None = None,
                 tls: dict | None = None) -> None:  # fmt: skip
        """`tls`: talk TLS (rediss://), with redis-py's SSLConnection options (`ssl_ca_certs`, ...; see tls_context);
        the server's certificate and host name are verified unless they say otherwise."""
        where = unix_path or (f"{host}:{port}" + (" over TLS" if tls is not None else ""))
        context = None if tls is None else tls_context(tls)
        try:
            self._sock = _connect(unix_path) if unix_path else _connect_tcp(host, port)
            if context is not None:
                self._sock = _wrap(self._sock, context, host)
        except OSError as error:  # ssl.SSLError (a failed verification too) is an OSError
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


def tls_context(options: dict) -> object:
    """The ssl.SSLContext redis-py's SSLConnection builds from the same options: the system's CAs plus
    `ssl_ca_certs`/`ssl_ca_path`/`ssl_ca_data`, `ssl_cert_reqs` (none, optional, required: the default),
    `ssl_check_hostname` (default true; off when nothing is verified), a client certificate from
    `ssl_certfile`/`ssl_keyfile`/`ssl_password`, `ssl_min_version`, `ssl_ciphers` and the verify-flag lists.

    `ssl` is imported here, for rediss:// only: with `socket` it costs a hook some 20 ms (redis-py: 165 ms)."""
    import ssl

    try:
        context = ssl.create_default_context()
        reqs = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}[
            options.get("ssl_cert_reqs", "required")]  # fmt: skip
        context.check_hostname = bool(options.get("ssl_check_hostname", True)) and reqs != ssl.CERT_NONE
        context.verify_mode = reqs
        for name, include in (("ssl_include_verify_flags", True), ("ssl_exclude_verify_flags", False)):
            for flag in filter(None, options.get(name, "").replace("[", "").replace("]", "").split(",")):
                value = getattr(ssl.VerifyFlags, flag.strip(), None)
                if value is None:
                    raise ValueError(f"{name}: {flag.strip()!r} is not an ssl.VerifyFlags name")
                context.verify_flags = context.verify_flags | value if include else context.verify_flags & ~value
        if options.get("ssl_certfile") or options.get("ssl_keyfile"):
            context.load_cert_chain(options.get("ssl_certfile"), options.get("ssl_keyfile"),
                                    options.get("ssl_password"))  # fmt: skip
        if any(options.get(name) for name in ("ssl_ca_certs", "ssl_ca_path", "ssl_ca_data")):
            context.load_verify_locations(options.get("ssl_ca_certs"), options.get("ssl_ca_path"),
                                          options.get("ssl_ca_data"))  # fmt: skip
        if options.get("ssl_min_version") is not None:
            context.minimum_version = ssl.TLSVersion(options["ssl_min_version"])
        if options.get("ssl_ciphers"):
            context.set_ciphers(options["ssl_ciphers"])
    except (OSError, ValueError, KeyError) as error:  # ssl.SSLError is an OSError
        raise BackendError(f"the TLS options of the Redis URL are not usable: {error}") from None
    return context


def _wrap(raw: _socket.socket, context, host: str) -> object:
    """`raw`, connected, as a TLS socket after the handshake (which checks the server's certificate)."""
    import socket

    sock = socket.socket(fileno=raw.detach())  # ssl wraps socket.socket, not the C module's socket
    try:
        sock.settimeout(TIMEOUT_SECONDS)
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


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
