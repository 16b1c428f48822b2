"""Real processes: many claimers racing and a claimer SIGKILLed mid-claim (on both backends), a write SIGKILLed
mid-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_queue, write_task

from hypervisor.claims.queue import TaskQueue
from hypervisor.core.errors import ClaimRefused, NothingToClaim
from hypervisor.core.timeutil import now
from hypervisor.tasks import taskfile
from hypervisor.tasks.store import TaskStore

CLAIM_LOOP = """
import json, sys
from hypervisor.core.errors import NothingToClaim
from hypervisor.tasks.store import TaskStore
from hypervisor.claims.queue import TaskQueue
queue = TaskQueue(TaskStore(sys.argv[1]))
print("ready", flush=True)
sys.stdin.read(1)  # start line: every process is up before any claims
claimed = []
while True:
    try:
        claimed.append(queue.claim_next(sys.argv[2])["id"])
    except NothingToClaim:
        break
print(json.dumps(claimed))
"""

CLAIM_ONE = """
import json, sys
from hypervisor.core.errors import ClaimRefused, NothingToClaim
from hypervisor.tasks.store import TaskStore
from hypervisor.claims.queue import TaskQueue
queue = TaskQueue(TaskStore(sys.argv[1]))
print("ready", flush=True)
sys.stdin.read(1)
try:
    claim = queue.claim_next(sys.argv[2], lease_seconds=float(sys.argv[3]) if len(sys.argv) > 3 else None)
    print(json.dumps(claim))
except (ClaimRefused, NothingToClaim) as error:
    print(json.dumps({"refused": str(error)}))
"""


def make_store(root: Path, count: int) -> None:
    for number in range(count):
        status = "active" if number % 2 else "inbox"
        write_task(root, f"t{number:05d}", folder=f"f{number % 8}", status=status, priority=number % 5)


def race(script: str, args_per_process: list[list[str]], backend: str = "file") -> list[str]:
    """Start every process, wait until each says it is ready (imported, queue open), release them together through
    stdin, return their stdout after the ready line."""
    env = dict(os.environ, HYPERVISOR_BACKEND=backend)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )  # fmt: skip
        for args in args_per_process
    ]
    for proc in procs:
        assert proc.stdout.readline() == "ready\n", f"a racer died before the start: exit {proc.wait()}"
    for proc in procs:
        proc.stdin.write("go")
        proc.stdin.close()
    outputs = []
    for proc in procs:
        out = proc.stdout.read()
        assert proc.wait(timeout=600) == 0
        outputs.append(out)
    return outputs


@pytest.mark.parametrize("round_", [1, 2])
def test_sixteen_processes_claim_two_thousand_tasks_exactly_once(tmp_path, round_, backend):
    root = tmp_path / "tasks"
    make_store(root, 2000)
    outputs = race(CLAIM_LOOP, [[str(root), f"w{n}"] for n in range(16)], backend)
    claimed = [task_id for out in outputs for task_id in json.loads(out)]
    counts = Counter(claimed)
    assert len(claimed) == 2000, f"claimed {len(claimed)} times for 2000 tasks"
    assert not [task_id for task_id, n in counts.items() if n > 1]
    assert set(counts) == {f"t{n:05d}" for n in range(2000)}
    workers_used = sum(1 for out in outputs if json.loads(out))
    assert workers_used > 1, "the race never happened: one process claimed everything"
    assert Counter(event["event"] for event in make_queue(root, backend).events()) == {"claimed": 2000}
    store = TaskStore(str(root))
    assert {s["status"] for s in store.by_id().values()} == {"in_progress"}


def test_claimer_killed_between_lock_and_write_is_taken_over_once_after_the_lease(tmp_path, backend):
    root = tmp_path / "tasks"
    path = write_task(root, "victim", status="active")
    before = path.read_text()
    env = dict(os.environ, HYPERVISOR_FAULT="claim-recorded", HYPERVISOR_BACKEND=backend)
    killed = subprocess.run([sys.executable, "-c", CLAIM_ONE, str(root), "doomed", "2.0"], input="go", env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    assert path.read_text() == before, "the task file was written although the claimer died before writing it"
    queue = make_queue(root, backend)
    record = queue.read_claim("victim")
    assert record.caller == "doomed"

    # Within the lease (claimed in this process, so no start-up time can outlast the lease): nobody gets the task.
    with pytest.raises((ClaimRefused, NothingToClaim)):
        queue.claim_next("early")
    assert not record.expired(now()), "the lease ran out before the early claim was tried; nothing was proven"

    deadline = time.monotonic() + 60
    while not queue.read_claim("victim").expired(now()):  # the lease runs out (never sooner than 2 s)
        assert time.monotonic() < deadline, "the lease never ran out"
        time.sleep(0.05)
    outputs = race(CLAIM_ONE, [[str(root), f"taker{n}"] for n in range(8)], backend)
    results = [json.loads(out) for out in outputs]
    winners = [r for r in results if "claim_token" in r]
    assert len(winners) == 1, results
    assert winners[0]["attempts"] == 2
    data = taskfile.read_doc(str(path)).data
    assert data["status"] == "in_progress" and data["attempts"] == 2 and data["assignee"] == winners[0]["assignee"]
    events = queue.events()
    assert [e["event"] for e in events] == ["taken_over"]
    assert events[0]["previous_caller"] == "doomed"


@pytest.mark.parametrize("fault", ["write-partial", "write-before-replace"])
def test_write_killed_midway_leaves_the_old_file_intact(tmp_path, fault):
    root = tmp_path / "tasks"
    path = write_task(root, "a", body="Body that must survive.\n" * 200, status="active", note="x")
    before = path.read_bytes()
    script = (
        "import sys\nfrom hypervisor.tasks.store import TaskStore\nfrom hypervisor.claims.queue import TaskQueue\n"
        "TaskQueue(TaskStore(sys.argv[1])).claim_next('w1')\n"
    )
    env = dict(os.environ, HYPERVISOR_FAULT=fault)
    # the claim record is written first; the fault fires on that first atomic write
    result = subprocess.run([sys.executable, "-c", script, str(root)], env=env, capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    leftovers = [p.name for p in (root / ".hypervisor" / "claims").iterdir()]
    assert all(name.startswith(".") and name.endswith(".tmp") for name in leftovers)
    assert TaskQueue(TaskStore(str(root))).claim_next("w2")["attempts"] == 1


def test_task_file_write_killed_midway_keeps_the_old_task(tmp_path):
    root = tmp_path / "tasks"
    path = write_task(root, "a", body="Body that must survive.\n" * 200, status="active")
    before = path.read_bytes()
    script = (
        "import os, sys\nfrom hypervisor.tasks.store import TaskStore\n"
        "store = TaskStore(sys.argv[1])\n"
        "def change(summary, doc):\n"
        "    doc.set('status', 'review')\n"
        "    os.environ['HYPERVISOR_FAULT'] = 'write-partial'\n"
        "store.update('a', change)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    assert TaskStore(str(root)).find("a")["status"] == "active"


UPDATE_ONE_KEY = """
import sys
from hypervisor.tasks.store import TaskStore
store = TaskStore(sys.argv[1])
print("ready", flush=True)
sys.stdin.read(1)
for round_ in range(20):
    store.update("shared", lambda summary, doc: doc.set(f"{sys.argv[2]}_{round_}", round_))
print("[]")
"""


def test_concurrent_writers_of_one_task_lose_no_update(tmp_path):
    root = tmp_path / "tasks"
    path = write_task(root, "shared", status="active")
    race(UPDATE_ONE_KEY, [[str(root), f"p{n}"] for n in range(6)])
    data = taskfile.read_doc(str(path)).data
    assert all(data.get(f"p{n}_{r}") == r for n in range(6) for r in range(20))
