"""Worker processes: one attempt's process, its process group and signals, and the /proc scan for leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from ..claims import workers
from ..core.timeutil import iso, now


class Attempt:
    """One worker process on one claimed task."""

    def __init__(self, slot: int, worker: str, claim: dict, number: int, log: str, workdir: str,
                 events_offset: object) -> None:  # fmt: skip
        self.slot = slot
        self.worker = worker
        self.task_id: str = claim["id"]
        self.title: str = claim.get("title") or claim["id"]
        self.token: str = claim["claim_token"]
        self.number = number
        self.log = log
        self.workdir = workdir
        self.events_offset = events_offset
        self.proc: subprocess.Popen | None = None
        self.pgid: int | None = None
        self.started = time.monotonic()
        self.started_at = now()
        self.deadline = 0.0
        self.next_renewal = 0.0
        self.kill_reason: str | None = None
        self.term_sent: float | None = None
        self.kill_sent = False
        self.claim_gone = False
        self.phase = "agent"  # or "verify": the task's verify command in its worktree (--land)
        self.verify: str | None = None

    def view(self) -> dict:
        return {"slot": self.slot, "worker": self.worker, "task_id": self.task_id, "title": self.title,
                "attempt": self.number, "pid": self.proc.pid if self.proc else None,
                "started_at": iso(self.started_at), "log": self.log,
                **({"phase": self.phase} if self.phase != "agent" else {})}  # fmt: skip


def spawn(attempt: Attempt, argv: list[str], env: dict[str, str], header: str) -> None:
    """Start the attempt's process in a session of its own, its output (after `header`) appended to its log."""
    try:  # unbuffered: a full disk fails the header's write here, naming the log, not later at close
        log = open(attempt.log, "ab", buffering=0)  # noqa: SIM115 - closed below, once the child holds it
        try:
            log.write(header.encode())
        except BaseException:
            log.close()
            raise
    except OSError as error:
        raise OSError(error.errno, error.strerror, attempt.log) from None
    with log:
        proc = subprocess.Popen(argv, cwd=attempt.workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    attempt.proc = proc
    attempt.pgid = own_group(proc)


def send_signal(attempt: Attempt, sig: int) -> None:
    """Signal the worker's whole process group (the agent and everything it started)."""
    try:
        if attempt.pgid is not None:
            os.killpg(attempt.pgid, sig)
        elif attempt.proc is not None:
            attempt.proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def install_interrupt_handler(handler):
    """Route SIGINT and SIGTERM to `handler(signum, frame)`; returns the function that puts the old ones back.
    Off the main thread (where signals cannot be handled) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def own_group(proc) -> int | None:
    """The worker's process group id if it leads its own (start_new_session), else None (never our own group)."""
    pid = getattr(proc, "pid", 0)
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        group = os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None
    return group if group == pid and group != os.getpgrp() else None


def run_to_end(argv: list[str], cwd: str, env: dict[str, str], log: str, header: str, timeout: float,
               kill_grace: float, stop: threading.Event) -> tuple[int | None, str]:  # fmt: skip
    """Run a command in a session of its own, its output appended to `log` after `header`; kill its process group
    at `timeout` (or when `stop` is set): SIGTERM, then SIGKILL after `kill_grace`. (exit code, or None if killed;
    its output)."""
    with open(log, "ab", buffering=0) as handle:
        handle.write(header.encode())
        start = handle.tell()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    group = own_group(proc)
    deadline, term_sent, killed = time.monotonic() + timeout, None, False
    while True:
        try:
            code = proc.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
        moment = time.monotonic()
        if term_sent is None and (moment >= deadline or stop.is_set()):
            _signal_group(proc, group, signal.SIGTERM)
            term_sent, killed = moment, True
        elif term_sent is not None and moment >= term_sent + kill_grace:
            _signal_group(proc, group, signal.SIGKILL)
    _signal_group(proc, group, signal.SIGKILL)  # whatever it left running in its group goes with it
    with open(log, "rb") as handle:
        handle.seek(start)
        output = handle.read().decode("utf-8", "replace")
    return (None if killed else code), output


def _signal_group(proc: subprocess.Popen, group: int | None, sig: int) -> None:
    try:
        if group is not None:
            os.killpg(group, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_leftovers(token: str, variable: str = workers.ENV_CLAIM_TOKEN) -> None:
    """SIGKILL what a finished worker left running outside its process group (Claude Code runs every Bash command
    in a session of its own): the processes whose environment holds its HYPERVISOR_CLAIM_TOKEN (or another
    `variable`=`token`). Linux (/proc) only."""
    needle = f"{variable}={token}".encode()
    for _ in range(3):  # again, in case one forked while it was being found
        found = []
        try:
            names = os.listdir("/proc")
        except OSError:
            return
        for name in names:
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as handle:
                    if needle in handle.read().split(b"\0"):
                        found.append(int(name))
            except OSError:
                continue
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def describe_exit(code: int | None) -> str:
    """Why an attempt whose process ended with `code` (negative: a signal) has no outcome."""
    if code is None:
        return "ended without an exit status"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} without finishing the task"
    return f"exited with code {code} without finishing the task"
