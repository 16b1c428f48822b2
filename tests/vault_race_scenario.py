"""Issue 14's "lost edits" race, shared by tests/test_vault_race.py and bench/vault_race.py.

A person edits task files the way editors save them while real worker processes claim, renew, release and complete
the same tasks through the library:

- two line appenders (one per save style: in place with `open(path, "w")`, and a temp file in the same folder then
  `os.replace`) read a file, append one unique `person-line ...` line to the end of its body and write it back;
  every line they wrote must be in its file exactly once at the end. Each appender has its own tasks and reads
  its file afresh before every edit, so it never overwrites a line of its own: a missing line is hypervisor's loss;
- a stale-buffer saver (on its own tasks, appending nothing) loads a file, keeps it open while the workers go on,
  then saves that buffer, half the time with `status: active` typed in: a claim taken meanwhile then has a file
  saying `active`, and a release done meanwhile leaves `status: in_progress` with no claim. Hypervisor has to put
  those right (the claim store is the truth; a file saying in_progress with no live claim becomes claimable once
  the lease has passed since the file last changed).

A run: a fresh project (20 tasks, `.hypervisor.yaml` with a short lease), the workers and persons started and let
go together, `run_seconds` of racing (workers release most claims and complete the rest, then reopen what they
completed, so the tasks stay in play), then the persons stop. The workers pause where they stand, a person types
over the file of each claim they hold, each holder renews once, and every such file must show its claim again
(`touch_check`). Then the workers drain (only complete from then on) until every task is done with no live claim,
or nothing has moved for two leases and more. Then the checks: lost and duplicated lines, unparsable files (the
store's view and `hypervisor validate`), stranded tasks (a live claim its file does not show, or a file saying
in_progress with no live claim), tasks not done, crashed processes.

Run as a script, this file is one of the racing processes: `python vault_race_scenario.py ROLE PARAMS_JSON`, ROLE
`worker`, `appender` or `stale`. It takes the phase on stdin (`run`, `pause`, `renew`, `drain`, `stop`; end of input
is `stop`) and prints `ready` when it is set up, a JSON line at `pause` and at `renew` (workers), and its figures as
one JSON line when it stops. Persons import no more than the
light claim records (the stale saver counts the cases it made), so they start at once.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

SCRIPT = os.path.abspath(__file__)
TASKS = 20
WORKERS = 4
LEASE = "2s"
# Who edits which task: the appenders and the stale saver never share a file (see the module docstring).
IN_PLACE_TASKS = [f"t{n:02d}" for n in range(0, 8)]
RENAME_TASKS = [f"t{n:02d}" for n in range(8, 16)]
STALE_TASKS = [f"t{n:02d}" for n in range(16, 20)]
LINE_PREFIX = "person-line "

# Pacing (seconds) of the simulated people and workers.
APPEND_PAUSE = (0.002, 0.02)  # between two appended lines
STALE_HOLD = (0.05, 0.4)  # a buffer stays loaded this long before it is saved
STALE_PAUSE = (0.0, 0.05)
RENEW_PAUSE = (0.01, 0.05)
IDLE_PAUSE = (0.01, 0.04)  # a worker that found nothing to claim
COMPLETE_SHARE = 0.3  # of the cycles while running; the rest release (the completed task is reopened soon after)
TRANSIENT_TRIES = 50  # a file caught mid in-place save does not parse for a moment: try again this often


def task_rel(task_id: str) -> str:
    """Where a task's file is, relative to the task root: half of them in a subfolder."""
    return f"{task_id}.md" if int(task_id[1:]) % 2 == 0 else f"sub/{task_id}.md"


def task_text(task_id: str) -> str:
    """A task file; the stale saver's tasks come first in queue order, so claims of the next task contend for them."""
    number = int(task_id[1:])
    return (
        "---\n"
        f"title: Task {number}\n"
        "status: active\n"
        f"priority: {0 if task_id in STALE_TASKS else 1 + number % 3}\n"
        "project: vault\n"
        f"created: 2026-01-{1 + number:02d}\n"
        "---\n"
        f"# Task {number}\n\nWork for task {number}; a person keeps notes below.\n"
    )


# -- the racing processes -----------------------------------------------------------------------------------------
class Control:
    """The phase the harness last wrote on stdin: `wait` until the first line, then `run`, `drain` or `stop`."""

    def __init__(self) -> None:
        self.phase = "wait"
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            self._set(line.strip() or self.phase)
        self._set("stop")

    def _set(self, phase: str) -> None:
        with self._changed:
            self.phase = phase
            self._changed.notify_all()

    def started(self) -> None:
        """Say `ready`, then wait for the start line (every process is up before any of them moves)."""
        print("ready", flush=True)
        self.wait_while("wait")

    def wait_while(self, phase: str) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.phase != phase)


def read_file(path: str) -> str:
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


def save(path: str, text: str, style: str) -> None:
    """Save as editors do: `in-place` rewrites the file itself (truncate, write); `rename` writes a temp file beside
    it (a dot-file, as editors name theirs, so no task scan reads it) and renames it over the file."""
    if style == "in-place":
        with open(path, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        return
    folder, name = os.path.split(path)
    temp = os.path.join(folder, f".{name}.{os.getpid()}.swp")
    with open(temp, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    os.replace(temp, path)


def with_field(text: str, key: str, value: str) -> str:
    """`text` with the frontmatter line of `key` (one line, as hypervisor writes it) replaced, as a person types."""
    if not text.startswith("---\n"):
        return text
    front, sep, body = text[4:].partition("\n---\n")
    if not sep:
        return text
    return "---\n" + re.sub(rf"(?m)^{key}:[^\n]*", f"{key}: {value}", front, count=1) + sep + body


def field_in(text: str, key: str) -> str | None:
    """The value of a plain one-line frontmatter field of `text`, or None."""
    match = re.search(rf"(?m)^{key}:[ \t]*(\S+)", text.partition("\n---\n")[0])
    return match.group(1) if match else None


def appender(params: dict) -> None:
    """Read a file, append one unique line to the end of its body, save it in `style`; say which lines it wrote."""
    rng = random.Random(params["seed"])
    root, style, name = params["root"], params["style"], params["name"]
    control = Control()
    control.started()
    lines: list[list[str]] = []
    while control.phase == "run":
        rel = rng.choice(params["files"])
        path = os.path.join(root, rel)
        text = read_file(path)
        line = f"{LINE_PREFIX}{name}-{len(lines)}"
        if text and not text.endswith("\n"):
            text += "\n"
        save(path, text + line + "\n", style)
        lines.append([rel, line])
        time.sleep(rng.uniform(*APPEND_PAUSE))
    print(json.dumps({"role": "appender", "name": name, "style": style, "lines": lines}), flush=True)


def stale_saver(params: dict) -> None:
    """Load a file, keep the buffer while the workers go on, save it (half the time typing `status: active`)."""
    from hypervisor.claims import records  # light (the hooks load it): the claim record, to count the cases

    def live_holder(state: str, task_id: str) -> str | None:
        claim = records.read_claim(state, task_id)
        return claim.caller if claim is not None and not claim.expired(time.time()) else None

    rng = random.Random(params["seed"])
    root = params["root"]
    state = os.path.join(root, records.STATE_DIR)
    control = Control()
    control.started()
    stats: Counter = Counter()
    while control.phase == "run":
        rel = rng.choice(params["files"])
        path = os.path.join(root, rel)
        buffer = read_file(path)
        time.sleep(rng.uniform(*STALE_HOLD))
        if control.phase != "run":
            break
        typed = rng.random() < 0.5
        text = with_field(buffer, "status", "active") if typed else buffer
        stale = read_file(path) != buffer  # the save overwrites what a worker wrote since the buffer was loaded
        style = ("in-place", "rename")[stats["saves"] % 2]
        save(path, text, style)
        holder = live_holder(state, os.path.basename(rel)[:-3])
        stats["saves"] += 1
        stats[f"saves_{style}"] += 1
        if stale:
            stats["stale_saves"] += 1
        if typed:
            stats["typed_active"] += 1
        # What hypervisor has to put right (seen just after the save; a figure, not a check).
        status, assignee = field_in(text, "status"), field_in(text, "assignee")
        if holder is not None and (status, assignee) != ("in_progress", holder):
            stats["saved_over_live_claim"] += 1  # a live claim whose file does not show it
        elif holder is None and status == "in_progress":
            stats["saved_in_progress_unclaimed"] += 1  # in_progress with no claim
        time.sleep(rng.uniform(*STALE_PAUSE))
    print(json.dumps({"role": "stale", "stats": stats}), flush=True)


def worker(params: dict) -> None:
    """Claim (a random ready task, or the next in queue order), renew a few times, then release or complete (and
    reopen the completed task soon after, so the race goes on); once draining, complete every claim."""
    from hypervisor.claims.backend import open_claims
    from hypervisor.claims.queue import TaskQueue
    from hypervisor.core.config import load_config
    from hypervisor.core.errors import ClaimRefused, NothingToClaim, TaskFileError, TaskNotFound
    from hypervisor.core.timeutil import iso, now
    from hypervisor.tasks.store import TaskStore

    rng = random.Random(params["seed"])
    name = params["name"]
    store = TaskStore(params["root"])
    queue = TaskQueue(store, load_config(params["config"]), open_claims("file", store.state))
    stats: Counter = Counter()
    errors: dict[str, str] = {}

    def attempt(what: str, operation, *args, **kwargs):
        """(True, what `operation(*args, **kwargs)` returned), or (False, None) after a refusal or TRANSIENT_TRIES
        transient failures."""
        for _ in range(TRANSIENT_TRIES):
            try:
                return True, operation(*args, **kwargs)
            except (TaskFileError, TaskNotFound) as error:  # a file caught mid in-place save
                key = f"{what}: {type(error).__name__}"
                stats[key] += 1
                errors.setdefault(key, str(error)[:300])
                time.sleep(rng.uniform(0.002, 0.01))
            except ClaimRefused as error:
                key = f"{what}: refused"
                stats[key] += 1
                errors.setdefault(key, str(error)[:300])
                return False, None
            except NothingToClaim:
                return False, None
        stats[f"{what}: gave up"] += 1
        return False, None

    def reopen(summary, doc) -> None:
        if doc.data.get("status") == "done":
            doc.set("status", "active")
            doc.set("modified", iso(now()))

    def pause_point(task_id: str | None = None, token: str | None = None) -> bool:
        """At `pause`: say which task this worker holds and wait; at `renew`, renew it once (the touch that must put
        its file right), say so and wait again. False if the claim was lost meanwhile."""
        if control.phase not in ("pause", "renew"):
            return True
        print(json.dumps({"paused": task_id}), flush=True)
        control.wait_while("pause")
        held = True
        if control.phase == "renew":
            if task_id is not None:
                held, _ = attempt("renew", queue.renew, task_id, token=token)
            print(json.dumps({"renewed": task_id, "held": held}), flush=True)
            control.wait_while("renew")
        return held

    control = Control()
    control.started()
    while control.phase != "stop":
        pause_point()
        ok, claim = False, None
        if rng.random() < 0.7:  # a random ready task
            found, ready = attempt("ready", queue.ready)
            if found and ready:
                ok, claim = attempt("claim", queue.claim_next, name, task_id=rng.choice(ready)["id"])
        else:  # the next in queue order: the stale saver's tasks first
            ok, claim = attempt("claim", queue.claim_next, name)
        if not ok:
            time.sleep(rng.uniform(*IDLE_PAUSE))
            continue
        stats["claims"] += 1
        task_id, token = claim["id"], claim["claim_token"]
        held = True
        for _ in range(rng.randint(1, 3)):
            time.sleep(rng.uniform(*RENEW_PAUSE))
            held = pause_point(task_id, token)
            if not held:
                break
            held, _ = attempt("renew", queue.renew, task_id, token=token)
            if not held:
                break
            stats["renews"] += 1
        time.sleep(rng.uniform(*RENEW_PAUSE))
        if not held or not pause_point(task_id, token):
            stats["claims_lost"] += 1
            continue
        running = control.phase == "run"
        if running and rng.random() >= COMPLETE_SHARE:
            ok, _ = attempt("release", queue.release, task_id, token=token)
            stats["releases" if ok else "releases_failed"] += 1
            continue
        ok, _ = attempt("complete", queue.complete, task_id, token=token, summary=f"{name} did it")
        stats["completes" if ok else "completes_failed"] += 1
        if ok and running:
            time.sleep(rng.uniform(*RENEW_PAUSE))
            ok, _ = attempt("reopen", store.update, task_id, reopen)
            stats["reopens" if ok else "reopens_failed"] += 1
    print(json.dumps({"role": "worker", "name": name, "stats": stats, "errors": errors}), flush=True)


# -- the harness --------------------------------------------------------------------------------------------------
def make_project(folder: Path, lease: str = LEASE) -> tuple[Path, Path]:
    """A project folder with `.hypervisor.yaml` (short lease, no dead letter in the way) and the 20 tasks; (task
    root, settings file)."""
    root = folder / "tasks"
    (root / "sub").mkdir(parents=True)
    config = folder / ".hypervisor.yaml"
    config.write_text(f"tasks: tasks\nlease: {lease}\nmax_attempts: 1000000\nbackend: file\n", encoding="utf-8")
    for number in range(TASKS):
        task_id = f"t{number:02d}"
        (root / task_rel(task_id)).write_text(task_text(task_id), encoding="utf-8")
    return root, config


def child_env() -> dict:
    env = dict(os.environ)
    for name in ("HYPERVISOR_TASKS", "HYPERVISOR_BACKEND", "HYPERVISOR_FAULT", "HYPERVISOR_WORKER"):
        env.pop(name, None)
    return env


class Child:
    """One racing process: the role, its stdin/stdout pipes, its stderr in a log file."""

    def __init__(self, role: str, params: dict, log: Path) -> None:
        self.role, self.name, self.log = role, params.get("name", role), log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, SCRIPT, role, json.dumps(params)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, text=True, env=child_env())  # fmt: skip
        self.result: dict | None = None
        self.crash: str | None = None

    def ready(self) -> bool:
        line = self.proc.stdout.readline()
        if line != "ready\n":
            self.proc.wait()
            self.crash = f"{self.name} died before the start (exit {self.proc.returncode}): {self.stderr_tail()}"
            return False
        return True

    def send(self, phase: str) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(phase + "\n")
            self.proc.stdin.flush()

    def stop(self, timeout: float = 60) -> None:
        """Say stop, take its JSON line; a crash (or a hang, then killed) is noted in `crash`."""
        try:
            out, _ = self.proc.communicate("stop\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            self.crash = f"{self.name} did not stop within {timeout} s of being told to (killed)"
            return
        except (BrokenPipeError, OSError):  # it died already: communicate could not write
            out = self.proc.stdout.read() if self.proc.stdout and not self.proc.stdout.closed else ""
            self.proc.wait()
        if self.proc.returncode != 0:
            self.crash = f"{self.name} exited {self.proc.returncode}: {self.stderr_tail()}"
        try:
            self.result = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.crash = self.crash or f"{self.name} printed no figures: {out[-500:]!r} {self.stderr_tail()}"

    def read_line(self) -> dict | None:
        """The next JSON line it prints (a crash is noted, and None returned, if it prints something else)."""
        line = self.proc.stdout.readline()
        try:
            return json.loads(line)
        except ValueError:
            self.crash = self.crash or f"{self.name} printed {line[-300:]!r} instead of an answer: {self.stderr_tail()}"
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stderr_tail(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]
        except OSError:
            return ""


def file_states(root: Path) -> dict[str, tuple]:
    """(status, assignee) of every task file as it reads now; ("unparsable", error) for one that does not parse."""
    from hypervisor.core.errors import TaskFileError
    from hypervisor.tasks import taskfile

    states = {}
    for number in range(TASKS):
        task_id = f"t{number:02d}"
        try:
            data = taskfile.read_doc(str(root / task_rel(task_id))).data
            states[task_id] = (data.get("status"), data.get("assignee"))
        except (TaskFileError, OSError) as error:
            states[task_id] = ("unparsable", str(error)[:300])
    return states


def stranded(states: dict[str, tuple], live: dict[str, str]) -> list[str]:
    """Tasks neither under a live claim that their file shows (in_progress, assignee the holder) nor claimable or
    final: a live claim the file does not show, or a file saying in_progress that no live claim holds."""
    found = []
    for task_id, (status, assignee) in sorted(states.items()):
        holder = live.get(task_id)
        if holder is not None and (status, assignee) != ("in_progress", holder):
            found.append(f"{task_id}: claimed by {holder} but its file says status {status}, assignee {assignee}")
        elif holder is None and status == "in_progress":
            found.append(f"{task_id}: its file says in_progress (assignee {assignee}) and no live claim holds it")
    return found


def touch_check(report: dict, root: Path, queue, crew: list[Child]) -> None:
    """Rule 2 head on, with the persons gone: pause the workers where they stand, type over the file of each claim
    they hold (`status: active`, or another assignee) as a person would, have each holder renew once, then every
    such claim still held must be shown by its file again."""
    held = {}
    for child in crew:
        child.send("pause")
    for child in crew:
        answer = child.read_line()
        if answer is not None and answer.get("paused"):
            held[answer["paused"]] = child.name
    for number, task_id in enumerate(sorted(held)):
        path = str(root / task_rel(task_id))
        text = read_file(path)
        typed = with_field(text, "status", "active") if number % 2 == 0 else with_field(text, "assignee", "someone")
        save(path, typed, ("in-place", "rename")[number % 2])
    for child in crew:
        child.send("renew")
    renewed = {}
    for child in crew:
        answer = child.read_line()
        if answer is not None and answer.get("renewed") and answer.get("held"):
            renewed[answer["renewed"]] = child.name
    states = file_states(root)
    checked, unrepaired = 0, []
    for task_id, name in sorted(renewed.items()):
        claim = queue.read_claim(task_id)
        if claim is None or claim.caller != name or claim.expired(time.time()):
            continue  # the lease ran out meanwhile (a loaded machine): nothing to check
        checked += 1
        if states[task_id] != ("in_progress", name):
            status, assignee = states[task_id]
            unrepaired.append(f"{task_id}: claimed by {name}, renewed, and its file says {status}, assignee {assignee}")
    report["touch_typed"] = len(held)
    report["touch_checked"] = checked
    report["touch_unrepaired"] = unrepaired


def run_scenario(folder: Path, seed: int = 0, run_seconds: float = 4.0, workers: int = WORKERS,
                 lease: str = LEASE, stuck_seconds: float | None = None,
                 drain_seconds: float = 120.0) -> dict:  # fmt: skip
    """One run (see the module docstring); a report of what was found (`problems(report)` lists what is wrong)."""
    from hypervisor.claims.backend import open_claims
    from hypervisor.claims.queue import TaskQueue
    from hypervisor.core.config import load_config
    from hypervisor.core.timeutil import parse_duration
    from hypervisor.tasks.store import TaskStore

    lease_seconds = parse_duration(lease)
    # With hypervisor right, a task stuck in a drain moves within one lease (a stale in_progress file becomes
    # claimable, an abandoned claim expires); nothing moving for two leases and then some means it never will.
    stuck_seconds = stuck_seconds if stuck_seconds is not None else 2 * lease_seconds + 3
    folder.mkdir(parents=True, exist_ok=True)
    root, config = make_project(folder, lease)
    logs = folder / "logs"
    logs.mkdir()
    common = {"root": str(root), "config": str(config)}
    rng = random.Random(seed)
    persons = [
        Child("appender", {**common, "name": "A", "style": "in-place", "seed": rng.random(),
                           "files": [task_rel(t) for t in IN_PLACE_TASKS]}, logs / "appender-A.log"),
        Child("appender", {**common, "name": "B", "style": "rename", "seed": rng.random(),
                           "files": [task_rel(t) for t in RENAME_TASKS]}, logs / "appender-B.log"),
        Child("stale", {**common, "name": "stale", "seed": rng.random(),
                        "files": [task_rel(t) for t in STALE_TASKS]}, logs / "stale.log"),
    ]  # fmt: skip
    crew = [Child("worker", {**common, "name": f"w{n}", "seed": rng.random()}, logs / f"w{n}.log")
            for n in range(workers)]  # fmt: skip
    everyone = persons + crew
    report: dict = {"seed": seed, "run_seconds": run_seconds, "workers": workers, "lease": lease, "folder": str(folder)}
    try:
        if not all([child.ready() for child in everyone]):
            report["crashes"] = [child.crash for child in everyone if child.crash]
            return report
        started = time.monotonic()
        for child in everyone:
            child.send("run")
        time.sleep(run_seconds)  # the length of the race (the scenario's pacing), not a wait for a condition
        for child in persons:
            child.stop()
        report["raced_seconds"] = round(time.monotonic() - started, 2)
        store = TaskStore(str(root))
        queue = TaskQueue(store, load_config(str(config)), open_claims("file", store.state))
        touch_check(report, root, queue, crew)
        for child in crew:
            child.send("drain")

        def snapshot() -> tuple[dict, dict]:
            return file_states(root), {t: c.caller for t, c in queue.live_claims().items()}

        drain_start = moved_at = time.monotonic()
        last = None
        while True:  # until every task is done with no live claim, or nothing has moved for stuck_seconds
            states, live = snapshot()
            if not live and all(status == "done" for status, _ in states.values()):
                report["drained"] = True
                break
            if (states, live) != last:
                last, moved_at = (states, live), time.monotonic()
            if time.monotonic() - moved_at > stuck_seconds or time.monotonic() - drain_start > drain_seconds:
                report["drained"] = False
                break
            time.sleep(0.05)
        report["drain_seconds"] = round(time.monotonic() - drain_start, 2)
        for child in crew:
            child.stop()
    finally:
        for child in everyone:
            child.kill()
    report["crashes"] = [child.crash for child in everyone if child.crash]
    check(report, root, config, queue, persons, crew)
    return report


def check(report: dict, root: Path, config: Path, queue, persons: list[Child], crew: list[Child]) -> None:
    """The end state: lines, parsing, stranded and unfinished tasks; and what the processes did."""
    from hypervisor.tasks.store import TaskStore

    written = [tuple(pair) for child in persons if child.role == "appender" and child.result
               for pair in child.result["lines"]]  # fmt: skip
    texts = {}
    for number in range(TASKS):
        rel = task_rel(f"t{number:02d}")
        texts[rel] = Counter((root / rel).read_text(encoding="utf-8", errors="replace").splitlines())
    report["lines"] = len(written)
    report["lines_by_style"] = {child.result["style"]: len(child.result["lines"])
                                for child in persons if child.role == "appender" and child.result}  # fmt: skip
    report["lost"] = [f"{rel}: {line}" for rel, line in written if texts[rel][line] == 0]
    styles = {
        child.result["name"]: child.result["style"] for child in persons if child.role == "appender" and child.result
    }
    report["lost_by_style"] = dict(Counter(styles[line.split()[-1].split("-")[0]] for line in report["lost"]))
    report["duplicated"] = [f"{rel}: {line} x{texts[rel][line]}" for rel, line in written if texts[rel][line] > 1]
    known = {line for _, line in written}
    report["unknown_lines"] = sorted(f"{rel}: {line}" for rel, counter in texts.items() for line in counter
                                     if line.startswith(LINE_PREFIX) and line not in known)  # fmt: skip

    states = file_states(root)
    live = {task_id: claim.caller for task_id, claim in queue.live_claims().items()}
    report["final_status"] = dict(Counter(status for status, _ in states.values()))
    report["unparsable"] = [f"{t}: {err}" for t, (status, err) in sorted(states.items()) if status == "unparsable"]
    _, invalid = TaskStore(str(root)).summaries()
    report["unparsable"] += [f"store: {entry['error']}" for entry in invalid]
    validate = subprocess.run([sys.executable, "-m", "hypervisor", "validate", "--tasks", str(root)],
                              cwd=config.parent, env=child_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    report["validate"] = {"exit": validate.returncode, "output": (validate.stdout + validate.stderr)[-2000:]}
    report["stranded"] = stranded(states, live)
    report["not_done"] = [f"{t}: {status}" for t, (status, _) in sorted(states.items())
                          if status != "done" and status != "unparsable"]  # fmt: skip
    workers: Counter = Counter()
    errors: dict[str, str] = {}
    for child in crew:
        if child.result:
            workers.update(child.result["stats"])
            for key, text in child.result["errors"].items():
                errors.setdefault(key, text)
    report["worker_stats"] = dict(workers)
    report["worker_errors"] = errors
    stale = next((child.result for child in persons if child.role == "stale" and child.result), None)
    report["stale_stats"] = dict(stale["stats"]) if stale else {}
    report["events"] = dict(Counter(event["event"] for event in queue.events()))


def problems(report: dict) -> list[str]:
    """What the run found wrong, one line each (empty: nothing)."""
    found = [f"crashed: {crash}" for crash in report.get("crashes", [])]
    if "lines" not in report:
        return found or ["the run ended before its checks"]
    if report["lost"]:
        found.append(f"{len(report['lost'])} of {report['lines']} person lines lost: {report['lost'][:10]}")
    if report["duplicated"]:
        found.append(f"{len(report['duplicated'])} person lines duplicated: {report['duplicated'][:10]}")
    if report["unknown_lines"]:
        found.append(f"person lines nobody wrote: {report['unknown_lines'][:10]}")
    if report["unparsable"]:
        found.append(f"unparsable task files: {report['unparsable'][:10]}")
    if report["validate"]["exit"] != 0:
        found.append(f"hypervisor validate exited {report['validate']['exit']}: {report['validate']['output']}")
    if report.get("touch_unrepaired"):
        found.append(f"files still not showing their live claim after the holder renewed: {report['touch_unrepaired']}")
    if report["stranded"]:
        found.append(f"{len(report['stranded'])} stranded tasks: {report['stranded']}")
    if not report.get("drained"):
        found.append(f"the drain did not finish (gave up after {report.get('drain_seconds')} s); not done: "
                     f"{report['not_done']}")  # fmt: skip
    return found


def describe(report: dict) -> str:
    """The report as indented JSON (for an assertion message)."""
    return json.dumps(report, indent=2, default=str)


def main(argv: list[str]) -> None:
    role, params = argv[0], json.loads(argv[1])
    {"worker": worker, "appender": appender, "stale": stale_saver}[role](params)


if __name__ == "__main__":
    main(sys.argv[1:])
