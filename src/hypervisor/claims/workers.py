"""Which agent session holds which claim (bindings the hooks make) and the journal of a holder's tool calls."""

from __future__ import annotations

import os

from ..core import fsutil, lightjson
from ..core.rules import check_task_id, is_task_id
from ..core.timeutil import iso, now

TYPE_CHECKING = False  # collections.abc is not loaded on the hook path; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Iterator

WORKER_AGENT_TYPE = "hypervisor:worker"

# What the supervisor hands each agent process it starts (`hypervisor run`).
ENV_WORKER = "HYPERVISOR_WORKER"
ENV_TASK_ID = "HYPERVISOR_TASK_ID"
ENV_CLAIM_TOKEN = "HYPERVISOR_CLAIM_TOKEN"
# The same token under a name Gemini CLI passes on to MCP servers: it drops every variable whose name contains
# TOKEN, KEY, SECRET, AUTH, ... from a stdio MCP server's environment (whatever the settings say).
ENV_CLAIM = "HYPERVISOR_CLAIM"


def supervised_claim(env) -> tuple[str, str] | None:
    """(task_id, claim_token) a supervisor started this process under, from its environment, or None."""
    task_id, token = env.get(ENV_TASK_ID), env.get(ENV_CLAIM_TOKEN) or env.get(ENV_CLAIM)
    return (task_id, token) if task_id and token else None


class Worker:
    """One agent: a CLI session, or a subagent inside it (`agent_id`), as the hook payloads name it."""

    __slots__ = ("session_id", "agent_id", "agent_type")

    def __init__(self, session_id: str = "", agent_id: str = "", agent_type: str = "") -> None:
        self.session_id = session_id
        self.agent_id = agent_id
        self.agent_type = agent_type

    @property
    def key(self) -> str:
        """A file-name-safe key: the ids come from the host CLI and are not trusted as names, so hex-encode them."""
        key = f"{self.session_id}\0{self.agent_id}".encode().hex()
        if len(key) > 200:  # ids longer than a file name allows: a digest instead
            import hashlib

            key = "sha256-" + hashlib.sha256(key.encode()).hexdigest()
        return key

    @property
    def label(self) -> str:
        """How logs name the worker: `hypervisor:worker a033b0a6` for a subagent, `session 6d1683e8` otherwise."""
        if self.agent_id:
            return f"{self.agent_type or 'subagent'} {self.agent_id[:8]}"
        return f"session {self.session_id[:8]}" if self.session_id else "session"


# -- bindings: <state>/workers/<key>.json ------------------------------------------------------------------------
def _binding_path(state: str, worker: Worker) -> str:
    return os.path.join(state, "workers", worker.key + ".json")


def bind(state: str, worker: Worker, task_id: str, token: str) -> None:
    """Remember that `worker` holds the claim `token` on `task_id`."""
    os.makedirs(os.path.join(state, "workers"), exist_ok=True)
    record = {
        "task_id": check_task_id(task_id),
        "token": token,
        "session_id": worker.session_id,
        "agent_id": worker.agent_id,
        "agent_type": worker.agent_type,
        "bound_at": iso(now()),
    }
    fsutil.atomic_write_json(_binding_path(state, worker), record)


def bound(state: str, worker: Worker) -> tuple[str, str] | None:
    """(task_id, token) of the claim bound to `worker`, or None."""
    try:
        record = fsutil.read_json(_binding_path(state, worker))
    except (ValueError, OSError):
        return None
    if not isinstance(record, dict):
        return None
    task_id, token = record.get("task_id"), record.get("token")
    if is_task_id(task_id) and isinstance(token, str):
        return task_id, token
    return None  # a damaged binding binds nothing: the worker must claim again


def unbind(state: str, worker: Worker) -> None:
    try:
        os.unlink(_binding_path(state, worker))
    except FileNotFoundError:
        pass


# -- the journal: <state>/journal/<task-id>.<token prefix>.jsonl --------------------------------------------------
def _journal_path(state: str, task_id: str, token: str) -> str:
    return os.path.join(state, "journal", f"{check_task_id(task_id)}.{token[:16]}.jsonl")


def record_call(state: str, task_id: str, token: str, tool: str, files: list[str], failed: bool) -> None:
    """Append one tool call of the claim holder (and the files it edited) to the claim's journal."""
    os.makedirs(os.path.join(state, "journal"), exist_ok=True)
    entry = {"ts": iso(now()), "tool": tool, "files": files, "failed": failed}
    fsutil.append_line(_journal_path(state, task_id, token), lightjson.dumps(entry))


def _journal_entries(state: str, task_id: str, token: str) -> Iterator[object]:
    """Each line of a claim's journal, decoded; a line cut short by a crash mid-append is passed over (the rest of
    the journal still counts); nothing if there is no journal."""
    try:
        with open(_journal_path(state, task_id, token), encoding="utf-8") as handle:
            for line in handle:
                try:
                    yield lightjson.loads(line)
                except (ValueError, RecursionError):
                    continue
    except FileNotFoundError:
        return


def _edited(entry: dict) -> Iterator[str]:
    """The files a journaled call edited (none for a call that failed)."""
    if not entry.get("failed"):
        yield from (name for name in entry.get("files") or () if isinstance(name, str))


def journal_summary(state: str, task_id: str, token: str) -> tuple[list[str], int]:
    """(files edited, sorted; number of tool calls) journaled under one claim."""
    files: set[str] = set()
    calls = 0
    for entry in _journal_entries(state, task_id, token):
        calls += 1
        if isinstance(entry, dict):
            files.update(_edited(entry))
    return sorted(files), calls


def journal_activity(state: str, task_id: str, token: str) -> dict:
    """What a claim holder has done so far, from its journal: tool calls, files edited (sorted), the last call."""
    files: set[str] = set()
    calls = 0
    last: dict | None = None
    for entry in _journal_entries(state, task_id, token):
        if not isinstance(entry, dict):
            continue
        calls += 1
        last = entry
        files.update(_edited(entry))
    shown = None
    if last is not None:
        shown = {"tool": str(last.get("tool", "")), "at": last.get("ts"), "failed": bool(last.get("failed"))}
    return {"calls": calls, "files": sorted(files), "last_call": shown}


def drop_journal(state: str, task_id: str, token: str) -> None:
    try:
        os.unlink(_journal_path(state, task_id, token))
    except FileNotFoundError:
        pass
