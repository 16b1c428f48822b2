"""Two hosts with their own network link and lock folder (flocks apart) claim 2000 tasks exactly once on Redis."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from conftest import free_port, make_queue, running_redis
from test_concurrency import make_store

from hypervisor.tasks.store import TaskStore

IP = shutil.which("ip") or "/usr/sbin/ip"
TASKS = 2000
WORKERS_PER_HOST = 8
SETUP_WAIT_SECONDS = 60  # a hang guard for servers and workers coming up, never an assertion on speed
RACE_WAIT_SECONDS = 600

# Run by each claim process: connect, say it is ready, wait for the start file, claim until nothing is left.
WORKER = """
import json, os, sys, time
from hypervisor.core.errors import NothingToClaim
from hypervisor.tasks.store import TaskStore
from hypervisor.claims.queue import TaskQueue
root, caller, ready, start = sys.argv[1:5]
queue = TaskQueue(TaskStore(root))
queue.claims.ping()  # connected before the start, so the server lists where every worker talks from
open(ready, "w").close()
while not os.path.exists(start):
    time.sleep(0.005)
claimed = []
while True:
    try:
        claimed.append(queue.claim_next(caller)["id"])
    except NothingToClaim:
        break
print(json.dumps({"caller": caller, "pid": os.getpid(), "host": queue.host, "claimed": claimed}))
"""

# Run once per host inside its fresh mount (and UTS) namespace: give the host its own view of the task folder,
# with a lock folder no other host sees, then start its workers and print their reports.
LAUNCH_HOST = """
import json, os, socket, subprocess, sys
plan = json.loads(sys.argv[1])
if plan["view"] != plan["root"]:
    subprocess.run(["mount", "--bind", plan["root"], plan["view"]], check=True)
subprocess.run(["mount", "--bind", plan["private_locks"], os.path.join(plan["view"], ".hypervisor", "locks")],
               check=True)
socket.sethostname(plan["hostname"])
procs = [subprocess.Popen([sys.executable, "-c", plan["worker"], plan["view"], caller,
                           os.path.join(plan["ready_dir"], caller), plan["start"]], stdout=subprocess.PIPE, text=True)
         for caller in plan["callers"]]
reports = [json.loads(proc.communicate()[0] or "null") for proc in procs]
print(json.dumps(reports))
sys.exit(max(proc.returncode != 0 for proc in procs))
"""

# Run inside a network namespace: how each address answers on the server's port.
PROBE = """
import errno, json, socket, sys
port, found = int(sys.argv[1]), {}
for address in sys.argv[2:]:
    try:
        socket.create_connection((address, port), timeout=3).close()
        found[address] = "open"
    except OSError as error:
        found[address] = errno.errorcode.get(error.errno, str(error))
print(json.dumps(found))
"""


@dataclass
class Host:
    name: str
    server_address: str  # where this host reaches Redis
    address: str  # this host's own address (what the server sees as the client)
    netns: str | None  # None in the fallback: a process group on this machine's own network

    def prefix(self, unshare: list[str]) -> list[str]:
        """The command prefix that runs a program on this host in a fresh mount and UTS namespace."""
        return ([IP, "netns", "exec", self.netns] if self.netns else []) + unshare


@dataclass
class TwoHosts:
    hosts: list[Host]
    port: int
    unshare: list[str]
    fallback: str | None  # why the hosts share this machine's network, or None if each has its own namespace

    def backend(self, host: Host, namespace: str) -> str:
        return f"redis://{host.server_address}:{self.port}/0?namespace={namespace}"


def _run(*command: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` failed ({result.returncode}): {result.stderr.strip()}", pytrace=False)
    return result


def _quiet(*command: str) -> None:
    subprocess.run(command, capture_output=True, timeout=30)


def _free_subnet_prefix() -> str:
    """`10.N` with no address of this machine inside 10.N.0.0/16."""
    taken = subprocess.run([IP, "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for _ in range(100):
        prefix = f"10.{random.randint(100, 250)}"
        if f" {prefix}." not in taken:
            return prefix
    raise AssertionError(f"no free 10.N.0.0/16 among this machine's addresses:\n{taken}")


def _make_links(cleanup: contextlib.ExitStack) -> list[Host] | str:
    """Two network namespaces, each linked to this one by its own veth pair and /24; the reason if refused."""
    if os.geteuid() != 0:
        return f"not root (euid {os.geteuid()}): network namespaces need CAP_NET_ADMIN"
    if not os.path.exists(IP):
        return f"{IP} (iproute2) is not installed"
    prefix, tag = _free_subnet_prefix(), os.getpid()
    hosts = []
    for number, letter in enumerate("ab", start=1):
        netns, outer, inner = f"hv2h-{tag}-{letter}", f"hv{tag}{letter}", f"hv{tag}{letter}n"
        server_address, address = f"{prefix}.{number}.1", f"{prefix}.{number}.2"
        added = subprocess.run([IP, "netns", "add", netns], capture_output=True, text=True, timeout=30)
        if added.returncode != 0:
            return f"`ip netns add {netns}` was refused: {added.stderr.strip()}"
        cleanup.callback(_quiet, IP, "netns", "del", netns)
        _run(IP, "link", "add", outer, "type", "veth", "peer", "name", inner)
        cleanup.callback(_quiet, IP, "link", "del", outer)  # gone with the namespace already, unless that failed
        _run(IP, "link", "set", inner, "netns", netns)
        _run(IP, "addr", "add", f"{server_address}/24", "dev", outer)
        _run(IP, "link", "set", outer, "up")
        _run(IP, "-n", netns, "addr", "add", f"{address}/24", "dev", inner)
        _run(IP, "-n", netns, "link", "set", inner, "up")
        _run(IP, "-n", netns, "link", "set", "lo", "up")
        hosts.append(Host(f"host-{letter}", server_address, address, netns))
    return hosts


def _unshare_command() -> list[str]:
    """An `unshare` prefix giving a process its own mount and UTS namespaces; fails the test if none works."""
    base = ["unshare", "--mount", "--uts", "--propagation", "private"]
    tried = []
    for command in (base, ["unshare", "--user", "--map-root-user", *base[1:]]):
        result = subprocess.run([*command, "true"], capture_output=True, text=True)
        if result.returncode == 0:
            return command
        tried.append(f"`{' '.join(command)} true`: {result.stderr.strip() or result.returncode}")
    pytest.fail("cannot give each host its own view of the lock folder (mount namespaces refused): "
                + "; ".join(tried), pytrace=False)  # fmt: skip


def _tail(path: Path) -> str:
    return path.read_text()[-3000:] if path.exists() else f"({path} was not written)"


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory) -> TwoHosts:
    """Two hosts on this machine and a redis-server both reach, each over its own link when namespaces allow."""
    with contextlib.ExitStack() as cleanup:
        made = _make_links(cleanup)
        unshare = _unshare_command()
        port = free_port()
        hosts = [Host(f"host-{letter}", "127.0.0.1", "127.0.0.1", None) for letter in "ab"] \
            if isinstance(made, str) else made  # fmt: skip
        addresses = tuple(dict.fromkeys(host.server_address for host in hosts))
        cleanup.enter_context(running_redis(tmp_path_factory.mktemp("redis"), addresses, port,
                                            ("--protected-mode", "no"), SETUP_WAIT_SECONDS))  # fmt: skip
        yield TwoHosts(hosts, port, unshare, fallback=made if isinstance(made, str) else None)


def _probe(host: Host, port: int, addresses: list[str]) -> dict[str, str]:
    result = subprocess.run([IP, "netns", "exec", host.netns, sys.executable, "-c", PROBE, str(port), *addresses],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _worker_connections(two_hosts: TwoHosts) -> Counter:
    """(client address, server address) of every connection the server has, but this one."""
    client = redis.Redis(host=two_hosts.hosts[0].server_address, port=two_hosts.port)
    try:
        own = client.client_id()
        return Counter((c["addr"].rpartition(":")[0], c["laddr"].rpartition(":")[0])
                       for c in client.client_list() if c["id"] != str(own))  # fmt: skip
    finally:
        client.close()


def test_two_hosts_with_unshared_locks_claim_two_thousand_tasks_exactly_once_on_redis(tmp_path, two_hosts):
    mode = "fallback: " + two_hosts.fallback if two_hosts.fallback else "network namespaces"
    if two_hosts.fallback:
        message = (f"two-host test fell back to two process groups on this machine's network (127.0.0.1), "
                   f"with separate lock folders only: {two_hosts.fallback}")  # fmt: skip
        print(message)
        warnings.warn(message, stacklevel=1)
    else:
        host_a, host_b = two_hosts.hosts
        for host, other in ((host_a, host_b), (host_b, host_a)):
            seen = _probe(host, two_hosts.port, [host.server_address, "127.0.0.1", other.server_address])
            # the server listens on the root namespace's veth addresses only: each host reaches it over its own link
            assert seen == {host.server_address: "open", "127.0.0.1": "ECONNREFUSED",
                            other.server_address: "ENETUNREACH"}, (host.name, seen)  # fmt: skip

    root = tmp_path / "tasks"
    make_store(root, TASKS)
    TaskStore(str(root)).ensure_state()
    shared_locks = root / ".hypervisor" / "locks"
    ready_dir, start = tmp_path / "ready", tmp_path / "start"
    ready_dir.mkdir()
    namespace = f"t{uuid.uuid4().hex[:12]}"
    tag = os.getpid()
    launchers, stderr_of = {}, {}
    for index, host in enumerate(two_hosts.hosts):
        private_locks = tmp_path / f"{host.name}-locks"
        private_locks.mkdir()
        # host B sees the task folder under another path: the Redis namespace, not the path, names the queue
        view = root if index == 0 else tmp_path / f"{host.name}-view"
        view.mkdir(exist_ok=True)
        plan = {"root": str(root), "view": str(view), "private_locks": str(private_locks),
                "hostname": f"{host.name}-{tag}", "ready_dir": str(ready_dir), "start": str(start), "worker": WORKER,
                "callers": [f"{host.name}-w{n}" for n in range(WORKERS_PER_HOST)]}  # fmt: skip
        env = dict(os.environ, HYPERVISOR_BACKEND=two_hosts.backend(host, namespace))
        stderr_of[host.name] = tmp_path / f"{host.name}.err"
        with open(tmp_path / f"{host.name}.out", "w") as out, open(stderr_of[host.name], "w") as err:
            launchers[host.name] = subprocess.Popen(
                [*host.prefix(two_hosts.unshare), sys.executable, "-c", LAUNCH_HOST, json.dumps(plan)],
                stdout=out, stderr=err, env=env, start_new_session=True,
            )  # fmt: skip

    deadline = time.monotonic() + SETUP_WAIT_SECONDS
    try:
        while len(os.listdir(ready_dir)) < 2 * WORKERS_PER_HOST:
            for name, proc in launchers.items():
                assert proc.poll() is None, f"{name} stopped before the start ({mode}): {_tail(stderr_of[name])}"
            assert time.monotonic() < deadline, f"workers never all got ready ({mode}): {os.listdir(ready_dir)}"
            time.sleep(0.02)
        connections = _worker_connections(two_hosts)
        start.touch()
        for name, proc in launchers.items():
            assert proc.wait(timeout=RACE_WAIT_SECONDS) == 0, f"{name} failed ({mode}): {_tail(stderr_of[name])}"
    finally:
        for proc in launchers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
                proc.wait()

    expected = Counter()
    for host in two_hosts.hosts:
        expected[host.address, host.server_address] += WORKERS_PER_HOST
    assert connections == expected, f"workers did not each talk over their host's own address ({mode})"

    reports = {name: json.loads((tmp_path / f"{name}.out").read_text()) for name in launchers}
    claimed = [task_id for host_reports in reports.values() for report in host_reports for task_id in report["claimed"]]
    counts = Counter(claimed)
    assert len(claimed) == TASKS, f"claimed {len(claimed)} times for {TASKS} tasks ({mode})"
    assert not [task_id for task_id, n in counts.items() if n > 1], f"tasks claimed twice ({mode})"
    assert set(counts) == {f"t{n:05d}" for n in range(TASKS)}
    per_host = {name: sum(len(r["claimed"]) for r in host_reports) for name, host_reports in reports.items()}
    print(f"claims per host ({mode}): {per_host}")
    assert all(per_host.values()), f"the race never happened: one host claimed everything: {per_host}"

    # the hosts' flocks really were apart: each host locked tasks in its own folder, none in the shared one
    assert not os.listdir(shared_locks)
    assert all(os.listdir(tmp_path / f"{host.name}-locks") for host in two_hosts.hosts)

    # every claim is in the stream once, stamped with the host and process that made it
    claimer = {task_id: (report["host"], report["pid"], report["caller"])
               for host_reports in reports.values() for report in host_reports
               for task_id in report["claimed"]}  # fmt: skip
    events = make_queue(root, two_hosts.backend(two_hosts.hosts[0], namespace)).events()
    assert Counter(event["event"] for event in events) == {"claimed": TASKS}
    assert all(event.get("host") and event.get("pid") for event in events)
    assert {e["task"]: (e["host"], e["pid"], e["caller"]) for e in events} == claimer
    assert {host for host, _, _ in claimer.values()} == {f"{host.name}-{tag}" for host in two_hosts.hosts}

    store = TaskStore(str(root))
    tasks = store.by_id()
    assert len(tasks) == TASKS
    assert {(s["status"], s["attempts"]) for s in tasks.values()} == {("in_progress", 1)}
    assert {task_id: s["assignee"] for task_id, s in tasks.items()} == {t: c[2] for t, c in claimer.items()}
