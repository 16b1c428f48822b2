"""Where claims and events live: the backend interface, the file backend, and choosing one from a spec."""

from __future__ import annotations

import os

from ..core import fsutil, lightjson
from ..core.errors import BackendError, ClaimRefused
from . import records as claims
from .records import Claim

TYPE_CHECKING = False  # typing costs a hook 4 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Mapping

ENV_BACKEND = "HYPERVISOR_BACKEND"
SCHEMES = ("file", "redis://", "rediss://", "unix://")


def resolve_backend(cli_value: str | None, config_value: object, env: Mapping[str, str] | None = None) -> str:
    """--backend > HYPERVISOR_BACKEND > `backend:` in .hypervisor.yaml > `file`, checked for a known scheme."""
    spec = cli_value or (os.environ if env is None else env).get(ENV_BACKEND) or config_value or "file"
    if not isinstance(spec, str) or not (spec == "file" or spec.startswith(SCHEMES[1:])):
        raise BackendError(
            f"backend {spec!r} is not allowed: use `file` (claims in the task folder, one machine) or "
            "`redis://host:port/db` (rediss:// for TLS, unix:///path.sock?db=N) for workers on several machines"
        )
    return spec


def open_claims(spec: str, state: str, light: bool = False) -> FileClaims:
    """The claim backend `spec` names, for the task root whose state folder is `state`.

    `light` (hooks) talks to Redis through the package's small stdlib client instead of redis-py.
    """
    if spec == "file":
        return FileClaims(state)
    from .redisbackend import RedisClaims

    return RedisClaims(spec, state, light=light)  # type: ignore[return-value]


class _Every:
    """A container holding everything."""

    def __contains__(self, item: object) -> bool:
        return True


_EVERY = _Every()


class FileClaims:
    """Claims as JSON files in `<state>/claims/`, made atomic by the per-task flock the caller holds; events in
    `<state>/events.jsonl`. Atomic on one machine's local disk only."""

    def __init__(self, state: str) -> None:
        self.spec = "file"
        self.state = state
        self._cache: dict[str, tuple[tuple[int, int, int], Claim | None]] = {}

    # -- records --------------------------------------------------------------------------------------------
    def read(self, task_id: str) -> Claim | None:
        """The claim record of a task, live or expired, or None."""
        return claims.read_claim(self.state, task_id)

    def read_fenced(self, task_id: str) -> tuple[Claim | None, object]:
        """The record and a fence value `acquire` compares; the file backend is fenced by the flock instead."""
        return self.read(task_id), None

    def names(self, max_age: float | None = None) -> set[str]:
        """The ids whose claim a look at the queue must know of: here every task with a claim record (live or
        expired), listed fresh (a listdir is cheap)."""
        try:
            names = os.listdir(os.path.join(self.state, "claims"))
        except FileNotFoundError:
            return set()
        return {name[:-5] for name in names if name.endswith(".json") and not name.startswith(".")}

    def look(self, max_age: float | None = None) -> _Every:
        """The ids a look at the queue asks `lease_state` about: here every one (a stat each, for the few a look
        reaches, rather than a listing of every claim in flight)."""
        return _EVERY

    def cached(self, task_id: str, status: str, at: float) -> Claim | None:
        """The claim record of a task that has one, re-read only when its file changed.

        For an in_progress task a cached live lease is trusted without a stat: until it expires, a renewal or a
        takeover keeps the task claimed, and a release, completion or block rewrites the task file, which the
        index notices.
        """
        cached = self._cache.get(task_id)
        if status == "in_progress" and cached and cached[1] is not None and not cached[1].expired(at):
            return cached[1]
        try:
            st = os.stat(claims.claim_path(self.state, task_id))
        except FileNotFoundError:
            self._cache.pop(task_id, None)
            return None
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if cached is None or cached[0] != signature:
            cached = (signature, self.read(task_id))
            self._cache[task_id] = cached
        return cached[1]

    def lease_state(self, task_id: str, status: str, at: float) -> bool | None:
        """Whether the task's lease is live at `at`; None if it has no claim record."""
        claim = self.cached(task_id, status, at)
        return None if claim is None else not claim.expired(at)

    def records(self) -> dict[str, Claim]:
        """Every claim record by task id (live or expired)."""
        return {task_id: claim for task_id in self.names() if (claim := self.cached(task_id, "", 0.0)) is not None}

    # -- changes (the caller holds the task's flock) --------------------------------------------------------
    def acquire(self, new: Claim, fence: object) -> Claim | None:
        """Store `new` unless the record changed since it was read with `fence`; the record that won otherwise."""
        claims.write_claim(self.state, new)
        return None

    def renew(self, task_id: str, token: str, lease_seconds: float | None = None,
              worker: str | None = None) -> Claim | None:  # fmt: skip
        """Extend the lease from now if `token` holds the record (expired but not taken over counts); else None."""
        claim = claims.renewed(self.read(task_id), token, lease_seconds, worker)
        if claim is not None:
            claims.write_claim(self.state, claim)
        return claim

    def renew_unlocked(self, task_id: str, token: str, worker: str | None = None) -> Claim | None:
        """`renew` for a caller without the task's flock (hooks): takes it, waiting a few seconds at most."""
        if not os.path.isdir(os.path.join(self.state, "locks")):
            return None
        with fsutil.locked(claims.lock_path(self.state, task_id), timeout=claims.LOCK_WAIT_SECONDS) as got:
            if not got:
                raise ClaimRefused(
                    f"task {task_id} stayed locked for {claims.LOCK_WAIT_SECONDS:g} s; its lease was not renewed"
                )
            return self.renew(task_id, token, worker=worker)

    def drop(self, task_id: str, token: str | None) -> bool:
        """End the claim if `token` holds it (None: whoever holds it); False if another token holds it now."""
        if token is not None:
            claim = self.read(task_id)
            if claim is None or claim.token != token:
                return False
        claims.drop_claim(self.state, task_id)
        return True

    # -- events ---------------------------------------------------------------------------------------------
    @property
    def events_path(self) -> str:
        return os.path.join(self.state, "events.jsonl")

    def event(self, record: dict) -> None:
        """Append one transition to the event log."""
        fsutil.append_line(self.events_path, lightjson.dumps(record))

    def events_cursor(self) -> object:
        """Where the log ends now; `events(since=...)` returns what was added after it."""
        try:
            return os.path.getsize(self.events_path)
        except OSError:
            return 0

    def events(self, since: object = None) -> list[dict]:
        """The events after `since` (a cursor), or all of them, oldest first."""
        found = []
        try:
            with open(self.events_path, "rb") as handle:
                handle.seek(since or 0)
                for line in handle:
                    try:
                        event = lightjson.loads(line)
                    except (ValueError, RecursionError):
                        continue
                    if isinstance(event, dict):
                        found.append(event)
        except OSError:
            pass
        return found

    def close(self) -> None:
        pass
