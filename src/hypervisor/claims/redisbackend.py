"""Claims, leases and events on Redis, for workers on several machines: every change is one Lua script, so it is
atomic on the server; leases expire by server-side TTL; every holder change is compared-and-set on the token."""

from __future__ import annotations

from ..core import lightjson
from ..core.errors import BackendError
from ..core.timeutil import now
from .records import Claim, parse_claim, renewed
from .redisscripts import SCRIPTS, script_sha

TYPE_CHECKING = False  # typing costs a hook 4 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_NAMESPACE = "hypervisor"
UNREACHABLE_HINT = (
    "(is redis-server running there? the backend comes from --backend, HYPERVISOR_BACKEND or "
    "backend: in .hypervisor.yaml)"
)
RECENT_SECONDS = 10.0  # a claim this recent may not be in a task index yet (the claimer writes its file just after)
EVENTS_MAXLEN = 1_000_000  # the stream is trimmed (approximately) beyond this many events


class _NoScript(Exception):
    pass


def parse_spec(spec: str) -> tuple[str, str]:
    """(the URL a Redis client takes, the key namespace) of `redis://host:port/db?namespace=NAME`."""
    base, _, query = spec.partition("?")
    namespace = DEFAULT_NAMESPACE
    kept = []
    for pair in filter(None, query.split("&")):
        key, _, value = pair.partition("=")
        if key == "namespace":
            if not value or not all(c.isalnum() or c in "-_." for c in value):
                raise BackendError(
                    f"backend {_without_password(spec)!r}: namespace {value!r} is not allowed: use letters, digits, - _ ."
                )
            namespace = value
        else:
            kept.append(pair)
    return base + ("?" + "&".join(kept) if kept else ""), namespace


class RedisClaims:
    """The claim backend on one Redis database; same contract as FileClaims, atomic across machines."""

    def __init__(self, spec: str, state: str, light: bool = False) -> None:
        self.spec = spec
        self.state = state
        self.url, self.namespace = parse_spec(spec)
        self.shown = _without_password(self.url)  # what error messages name: logs and model prompts see them
        self.prefix = self.namespace + ":"
        self._light = light
        self._call: Callable[..., object] | None = None
        self._closer: Callable[[], None] = lambda: None
        self._leases: dict[str, bool] = {}

    # -- the connection -------------------------------------------------------------------------------------
    def _connect(self) -> Callable[..., object]:
        if self._light:  # rediss:// too: the stdlib client speaks TLS through `ssl`
            return self._connect_light()
        import redis

        try:
            client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        except ValueError as error:
            raise BackendError(f"backend {_without_password(self.spec)!r} is not a Redis URL: {error}") from None
        errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

        def call(*args: object) -> object:
            try:
                return client.execute_command(*args)
            except redis.exceptions.NoScriptError:
                raise _NoScript() from None
            except errors as error:
                raise BackendError(f"cannot reach Redis at {self.shown}: {error} {UNREACHABLE_HINT}") from None
            except redis.exceptions.RedisError as error:
                raise BackendError(f"Redis at {self.shown} refused {args[0]}: {error}") from None

        self._closer = client.close
        return call

    def _connect_light(self) -> Callable[..., object]:
        from . import resp

        connection = resp.Connection(**light_address(self.url))

        def call(*args: object) -> object:
            try:
                return connection.call(*args)
            except resp.ReplyError as error:
                if str(error).startswith("NOSCRIPT"):
                    raise _NoScript() from None
                raise BackendError(f"Redis at {self.shown} refused {args[0]}: {error}") from None

        self._closer = connection.close
        return call

    def _run(self, name: str, keys: list[str], *args: object) -> object:
        if self._call is None:
            self._call = self._connect()
        try:
            return self._call("EVALSHA", script_sha(name), len(keys), *keys, *args)
        except _NoScript:
            return self._call("EVAL", SCRIPTS[name], len(keys), *keys, *args)

    def close(self) -> None:
        self._closer()
        self._call = None

    def ping(self) -> None:
        """Raise BackendError unless the server answers."""
        self._run("ping", [])

    def _keys(self, task_id: str) -> list[str]:
        return [f"{self.prefix}claim:{task_id}", f"{self.prefix}lease:{task_id}", f"{self.prefix}seq:{task_id}",
                f"{self.prefix}claimed", f"{self.prefix}expiry"]  # fmt: skip

    # -- records --------------------------------------------------------------------------------------------
    def read(self, task_id: str) -> Claim | None:
        """The claim record of a task, live or expired, or None."""
        return self.read_fenced(task_id)[0]

    def read_fenced(self, task_id: str) -> tuple[Claim | None, int]:
        """The record and its `seq`, read in one step; `acquire` succeeds only if `seq` has not moved since."""
        raw, lease, ttl, seq = self._run("read", self._keys(task_id)[:3])  # type: ignore[misc]
        return _claim(raw, lease, ttl), int(seq)

    def names(self, max_age: float | None = None) -> set[str]:
        """The ids whose claim a look at the queue (with an index up to `max_age` old) must know of, with their
        leases for `lease_state`: those claimed lately, live, and those whose lease has lapsed. A task claimed
        longer ago is in_progress in any index that recent; one whose claimer died before writing its file
        looks claimable and is refused by the claim's own check on the server."""
        window_ms = int(((max_age or 0.0) + RECENT_SECONDS) * 1000)
        keys = [self.prefix + "claimed", self.prefix + "expiry"]
        recent, lapsed = self._run("names", keys, window_ms)  # type: ignore[misc]
        self._leases = dict.fromkeys(recent.decode().split("\n"), True) if recent else {}
        if lapsed:
            self._leases.update(dict.fromkeys(lapsed.decode().split("\n"), False))
        return set(self._leases)

    def look(self, max_age: float | None = None) -> set[str]:
        """The ids a look at the queue asks `lease_state` about: `names(max_age)`."""
        return self.names(max_age)

    def lease_state(self, task_id: str, status: str, at: float) -> bool | None:
        """Whether the task's lease is live as of the last `names()`; None if it had no claim record."""
        return self._leases.get(task_id)

    def records(self) -> dict[str, Claim]:
        """Every claim record by task id (live or expired)."""
        flat = self._run("records", [self.prefix + "claimed"], self.prefix)
        found = {}
        for index in range(0, len(flat), 4):  # type: ignore[arg-type]
            task_id, raw, lease, ttl = flat[index : index + 4]  # type: ignore[index]
            claim = _claim(raw, lease or None, ttl)
            if claim is not None:
                found[task_id.decode()] = claim
        return found

    # -- changes --------------------------------------------------------------------------------------------
    def acquire(self, new: Claim, fence: object) -> Claim | None:
        """Store `new` unless a lease is live or the record changed since it was read with `fence` (its seq)."""
        lease_ms = max(1, int(new.lease_seconds * 1000))
        record = lightjson.dumps(new.to_json())
        won = self._run("acquire", self._keys(new.task_id), new.task_id, int(fence or 0), record, lease_ms, new.token)
        if won == 1:
            return None
        return self.read(new.task_id) or new

    def renew(self, task_id: str, token: str, lease_seconds: float | None = None,
              worker: str | None = None) -> Claim | None:  # fmt: skip
        """Extend the lease from now if `token` holds the record (expired but not taken over counts); else None."""
        keys = self._keys(task_id)
        for _ in range(20):  # the record changes under us only by a renewal of the same holder (a hook and the
            raw = self._run("read", keys[:3])[0]  # supervisor both renew): try again
            claim = renewed(_claim(raw), token, lease_seconds, worker)
            if claim is None:
                return None
            new = lightjson.dumps(claim.to_json())
            if self._run("renew", keys, raw, new, token, max(1, int(claim.lease_seconds * 1000)), task_id) == 1:
                return claim
        raise BackendError(f"task {task_id}: the claim record kept changing; its lease was not renewed")

    def renew_unlocked(self, task_id: str, token: str, worker: str | None = None) -> Claim | None:
        """`renew` for hooks: the compare-and-set needs no lock."""
        return self.renew(task_id, token, worker=worker)

    def drop(self, task_id: str, token: str | None) -> bool:
        """End the claim if `token` holds it (None: whoever holds it); False if it does not."""
        return self._run("drop", self._keys(task_id), token or "", task_id) == 1

    # -- events ---------------------------------------------------------------------------------------------
    def event(self, record: dict) -> None:
        """Append one transition to the stream."""
        self._run("event", [self.prefix + "events"], EVENTS_MAXLEN, lightjson.dumps(record))

    def events_cursor(self) -> object:
        """The id of the last event now; `events(since=...)` returns what was added after it."""
        return self._run("events_end", [self.prefix + "events"]).decode()  # type: ignore[union-attr]

    def events(self, since: object = None) -> list[dict]:
        """The events after `since` (a stream id), or all of them, oldest first."""
        found: list[dict] = []
        cursor = str(since or "0-0")
        while True:
            flat = self._run("events", [self.prefix + "events"], cursor, 1000)
            for index in range(0, len(flat), 2):  # type: ignore[arg-type]
                cursor = flat[index].decode()  # type: ignore[index]
                try:
                    event = lightjson.loads(flat[index + 1])  # type: ignore[index]
                except ValueError:
                    continue
                if isinstance(event, dict):
                    found.append(event)
            if len(flat) < 2000:  # type: ignore[arg-type]
                return found


# The TLS options of a rediss:// URL the stdlib client takes, under redis-py's names (its SSLConnection arguments,
# which redis-py's URL parsing passes through), and how redis-py reads each value from the URL.
_TLS_OPTIONS = {"ssl_cert_reqs": str, "ssl_ca_certs": str, "ssl_ca_path": str, "ssl_ca_data": str,
                "ssl_certfile": str, "ssl_keyfile": str, "ssl_password": str, "ssl_ciphers": str,
                "ssl_check_hostname": lambda value: value.upper() not in ("0", "F", "FALSE", "N", "NO"),
                "ssl_min_version": int, "ssl_include_verify_flags": str, "ssl_exclude_verify_flags": str}  # fmt: skip


def light_address(url: str) -> dict:
    """The stdlib client's arguments for `redis[s]://[[user]:password@]host[:port][/db]` or `unix:///path[?db=N]`,
    read without urllib (whose import costs a hook 4-10 ms). A rediss:// URL adds `tls`: its TLS options
    (`ssl_ca_certs=/path/ca.pem`, `ssl_cert_reqs=none`, ...), read as redis-py reads them."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    params = dict(pair.partition("=")[::2] for pair in query.split("&") if pair)
    try:
        if scheme == "unix":
            return {"unix_path": _unquote(rest), "db": int(params.get("db") or 0),
                    "password": _unquote(params["password"]) if "password" in params else None}  # fmt: skip
        userinfo, _, hostpart = rest.rpartition("@")
        hostpart, _, path = hostpart.partition("/")
        username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
        host, port = hostpart, "6379"
        if hostpart.startswith("["):  # an IPv6 address: [::1]:6379
            host, _, after = hostpart[1:].partition("]")
            port = after[1:] or port
        elif ":" in hostpart:
            host, _, port = hostpart.partition(":")
        address = {"host": host or "127.0.0.1", "port": int(port),
                   "db": int(path.strip("/") or params.get("db") or 0), "username": _unquote(username) or None,
                   "password": _unquote(password) if userinfo and ":" in userinfo else None}  # fmt: skip
        if scheme == "rediss":
            address["tls"] = _tls_options(url, params)
        return address
    except ValueError as error:
        raise BackendError(f"backend {_without_password(url)!r} is not a Redis URL: {error}") from None


def _tls_options(url: str, params: dict[str, str]) -> dict:
    """The TLS options among a rediss:// URL's query parameters; BackendError for an ssl_ option the stdlib client
    cannot honour (the OCSP checks need third-party packages): a hook never quietly weakens what the URL asks."""
    options = {}
    for name, raw in params.items():
        value = _unquote(raw.replace("+", " "))  # as urllib's parse_qs reads a query value
        if not name.startswith("ssl_") or not value:
            continue
        read = _TLS_OPTIONS.get(name)
        if read is None:
            raise BackendError(f"backend {_without_password(url)!r}: {name} is not supported by the hooks' Redis "
                               f"client; supported: {', '.join(_TLS_OPTIONS)}")  # fmt: skip
        try:
            options[name] = read(value)
        except ValueError:
            raise BackendError(f"backend {_without_password(url)!r}: {name}={value!r} is not allowed") from None
    reqs = options.get("ssl_cert_reqs", "required")
    if reqs not in ("none", "optional", "required"):
        raise BackendError(f"backend {_without_password(url)!r}: ssl_cert_reqs={reqs!r} is not allowed: use none, "
                           "optional or required (the default)")  # fmt: skip
    return options


def _without_password(url: str) -> str:
    """`url` with any password (of the user, or `password=`/`ssl_password=` in the query) replaced by ***."""
    base, mark, query = url.partition("?")
    if mark:
        pairs = [pair.partition("=") for pair in query.split("&")]
        query = "&".join(key + eq + ("***" if key in ("password", "ssl_password") and value else value)
                         for key, eq, value in pairs)  # fmt: skip
    scheme, sep, rest = base.partition("://")
    userinfo, at, hostpart = rest.partition("@")
    if at and "/" not in userinfo:
        user, colon, _ = userinfo.partition(":")
        base = f"{scheme}{sep}{user}{':***' if colon else ''}@{hostpart}"
    return base + mark + query


def _unquote(text: str) -> str:
    """%XX escapes decoded (a password may hold any character)."""
    if "%" not in text:
        return text
    parts = text.split("%")
    out = bytearray(parts[0].encode())
    for part in parts[1:]:
        out += bytes([int(part[:2], 16)]) + part[2:].encode()
    return out.decode()


def _claim(raw: bytes | None, lease: bytes | None = None, ttl: int | None = None) -> Claim | None:
    """A Claim whose `lease_expires_at` is on this machine's clock: now + the server's TTL while the lease is live,
    else in the past (as stored, if `ttl` is None). The server's clock decides expiry, so hosts whose clocks
    disagree still agree on it."""
    if raw is None:
        return None
    try:
        claim = parse_claim(lightjson.loads(raw))
    except ValueError:
        return None
    if claim is None:
        return None
    if ttl is None:
        return claim
    at = now()
    if lease is not None and lease.decode() == claim.token and ttl > 0:
        claim.lease_expires_at = at + ttl / 1000.0
    else:
        claim.lease_expires_at = min(claim.lease_expires_at, at - 0.001)
    return claim
