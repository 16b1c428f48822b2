"""What only the Redis backend has: leases that expire on the server's clock, namespaces, hooks that reach Redis
without redis-py, and a clear error when the server cannot be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import redis
from conftest import REPO, free_port, make_queue, off_hook_path, run_cli, write_task

from hypervisor.core.errors import ClaimRefused, NothingToClaim
from hypervisor.core.timeutil import now

HOOK = [sys.executable, "-S", str(REPO / "hooks/tool_hook.py")]


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    """Poll `condition` until it holds; `timeout` is a hang guard, never a claim about speed."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def namespace() -> str:
    return f"r{uuid.uuid4().hex[:12]}"


@pytest.fixture
def spec(redis_server, namespace) -> str:
    return f"{redis_server}?namespace={namespace}"


@pytest.fixture
def server(redis_server):
    client = redis.Redis.from_url(redis_server)
    yield client
    client.close()


def test_the_lease_is_a_server_side_ttl_and_the_record_outlives_it(root, spec, server, namespace):
    write_task(root, "a")
    queue = make_queue(root, spec)
    first = queue.claim_next("w1", lease_seconds=1.0)
    lease = f"{namespace}:lease:a"
    assert 0 < server.pttl(lease) <= 1000 and server.get(lease).decode() == first["claim_token"]
    wait_until(lambda: not server.exists(lease), "the server to expire the lease")  # nobody else deletes it
    record = queue.read_claim("a")
    assert record.token == first["claim_token"] and record.expired(now())
    second = queue.claim_next("w2")
    assert second["reclaimed_from"] == "w1" and second["attempts"] == 2
    with pytest.raises(ClaimRefused, match="claim lost: lease expired .* ago, now held by w2"):
        queue.complete("a", token=first["claim_token"], summary="late")


def test_expiry_follows_the_servers_clock_not_the_hosts(root, spec, server, namespace):
    """A host whose clock runs an hour ahead writes a record that looks live for an hour; the server's TTL wins."""
    write_task(root, "a")
    queue = make_queue(root, spec)
    queue.claim_next("w1", lease_seconds=1.0)
    key = f"{namespace}:claim:a"
    record = json.loads(server.get(key))
    record["lease_expires_at"] = time.time() + 3600
    server.set(key, json.dumps(record))
    assert not queue.read_claim("a").expired(now()) and server.exists(f"{namespace}:lease:a")
    wait_until(lambda: not server.exists(f"{namespace}:lease:a"), "the server to expire the lease")
    assert queue.read_claim("a").expired(now())
    assert queue.claim_next("w2")["reclaimed_from"] == "w1"


def test_namespaces_keep_queues_apart_and_name_the_queue_whatever_its_path(tmp_path, redis_server):
    first_root, second_root = tmp_path / "one" / "tasks", tmp_path / "two" / "tasks"
    for root in (first_root, second_root):
        write_task(root, "a")
    one, two = f"{redis_server}?namespace=one{os.getpid()}", f"{redis_server}?namespace=two{os.getpid()}"
    make_queue(first_root, one).claim_next("w1", task_id="a")
    make_queue(second_root, two).claim_next("w2", task_id="a")  # same id, other namespace: its own claim
    other_view = tmp_path / "mount" / "tasks"  # the first folder as another host mounts it
    other_view.parent.mkdir()
    other_view.symlink_to(first_root)
    with pytest.raises(ClaimRefused, match="already claimed by w1"):
        make_queue(other_view, one).claim_next("w3", task_id="a")


def test_an_unreachable_server_or_a_bad_spec_is_named_with_what_to_do(root):
    before = write_task(root, "a").read_text()
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = run_cli("claim", "--caller", "w1", "--tasks", str(root), "--backend", url)
    assert result.returncode == 1 and f"cannot reach Redis at {url}" in result.stderr, result.stderr
    assert "is redis-server running there?" in result.stderr
    result = run_cli("claim", "--caller", "w1", "--tasks", str(root), "--backend", "postgres://db/1")
    assert result.returncode == 1
    assert "backend 'postgres://db/1' is not allowed: use `file`" in result.stderr and "redis://" in result.stderr
    secret = f"redis://worker:s3cret@127.0.0.1:{free_port()}/0"
    result = run_cli("claim", "--caller", "w1", "--tasks", str(root), "--backend", secret)
    assert "cannot reach Redis at redis://worker:***@127.0.0.1:" in result.stderr and "s3cret" not in result.stderr
    result = run_cli(
        "claim", "--caller", "w1", "--tasks", str(root), env={"HYPERVISOR_BACKEND": url + "?namespace=a b"}
    )
    assert "namespace 'a b' is not allowed" in result.stderr
    assert (root / "a.md").read_text() == before, "nothing may change when the backend is unusable"


def test_the_cli_reads_the_backend_from_the_settings_file(root, spec, server, namespace):
    write_task(root, "a")
    (root.parent / ".hypervisor.yaml").write_text(f"tasks: tasks\nbackend: '{spec}'\n")
    claimed = json.loads(run_cli("claim", "--caller", "w1", "--json", cwd=root.parent, check=0).stdout)
    assert server.get(f"{namespace}:lease:a").decode() == claimed["claim_token"]
    assert not (root / ".hypervisor" / "claims").exists() or not list((root / ".hypervisor" / "claims").iterdir())
    shown = run_cli("show", "a", "--json", cwd=root.parent, check=0).stdout
    assert json.loads(shown)["claim"]["caller"] == "w1"
    run_cli("complete", "a", "--token", claimed["claim_token"], "--summary", "ok", cwd=root.parent, check=0)
    assert [json.loads(fields[b"event"])["event"] for _, fields in server.xrange(f"{namespace}:events")] == [
        "claimed", "completed"]  # fmt: skip


# -- hooks -------------------------------------------------------------------------------------------------------
def hook(project, payload: dict, env: dict) -> tuple[dict | None, str]:
    result = subprocess.run(HOOK, input=json.dumps(payload), capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ["PATH"], "CLAUDE_PROJECT_DIR": str(project), **env})  # fmt: skip
    assert result.returncode == 0, result.stderr
    return (json.loads(result.stdout) if result.stdout.strip() else None), result.stderr


def write_payload(project, rel: str, event: str = "PreToolUse") -> dict:
    return {"session_id": "s1", "transcript_path": "/dev/null", "cwd": str(project), "hook_event_name": event,
            "tool_name": "Write", "tool_input": {"file_path": str(project / rel), "content": "x\n"},
            "tool_use_id": "toolu_1", **({"tool_response": {}} if event == "PostToolUse" else {})}  # fmt: skip


def test_hooks_gate_and_renew_through_redis_without_redis_py(tmp_path, spec, server, namespace):
    project = tmp_path / "project"
    write_task(project / "tasks", "t1", status="active", scope=["models/**"])
    queue = make_queue(project / "tasks", spec)
    claimed = queue.claim_next("supervisor", task_id="t1", lease_seconds=30)
    env = {"HYPERVISOR_BACKEND": spec, "HYPERVISOR_WORKER": "1", "HYPERVISOR_TASK_ID": "t1",
           "HYPERVISOR_CLAIM_TOKEN": claimed["claim_token"]}  # fmt: skip
    assert hook(project, write_payload(project, "models/a.sql"), env) == (None, "")
    output, _ = hook(project, write_payload(project, "README.md"), env)
    assert "outside the scope of task t1" in output["reason"]

    lease = f"{namespace}:lease:t1"
    wait_until(lambda: server.pttl(lease) < 29_000, "a second of the lease to pass")
    assert hook(project, write_payload(project, "models/a.sql", "PostToolUse"), env) == (None, "")
    assert server.pttl(lease) > 29_000, "the post-tool hook did not renew the lease on the server"

    server.pexpire(lease, 1)  # the lease runs out; another worker takes the task over
    wait_until(lambda: not server.exists(lease), "the lease to run out")
    queue.claim_next("w3", task_id="t1")
    output, _ = hook(project, write_payload(project, "models/a.sql"), env)
    assert output["reason"].startswith("hypervisor: claim lost: lease expired"), output


def test_the_redis_hook_path_loads_only_the_light_core(tmp_path, spec):
    project = tmp_path / "project"
    write_task(project / "tasks", "t1", status="active")
    claimed = make_queue(project / "tasks", spec).claim_next("supervisor", task_id="t1")
    code = (
        "import io, json, os, sys; sys.path.insert(0, sys.argv[1]);"
        "from hypervisor.hooks.edge import run;"
        "[run(io.BytesIO(p.encode()), io.StringIO(), io.StringIO(), os.environ) for p in json.loads(sys.argv[2])];"
        "print(json.dumps(sorted(sys.modules)))"
    )
    payloads = [write_payload(project, "a.txt"), write_payload(project, "a.txt", "PostToolUse")]
    env = {**os.environ, "CLAUDE_PROJECT_DIR": str(project), "HYPERVISOR_BACKEND": spec, "HYPERVISOR_WORKER": "1",
           "HYPERVISOR_TASK_ID": "t1", "HYPERVISOR_CLAIM_TOKEN": claimed["claim_token"]}  # fmt: skip
    result = subprocess.run([sys.executable, "-S", "-c", code, str(REPO / "src"),
                             json.dumps([json.dumps(p) for p in payloads])], capture_output=True, text=True, env=env,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    modules = set(json.loads(result.stdout))
    assert "redis" not in modules and "yaml" not in modules
    assert not off_hook_path(modules), off_hook_path(modules)
    assert "hypervisor.claims.resp" in modules, "the hook never talked to Redis"


def test_the_real_hook_script_on_redis_loads_only_the_hook_path(tmp_path, spec):
    """hooks/tool_hook.py, one process a call, against Redis: nothing of the package outside conftest.on_hook_path."""
    project = tmp_path / "project"
    write_task(project / "tasks", "t1", status="active", scope=["models/**"])
    claimed = make_queue(project / "tasks", spec).claim_next("supervisor", task_id="t1")
    env = {"PATH": os.environ["PATH"], "CLAUDE_PROJECT_DIR": str(project), "HYPERVISOR_BACKEND": spec,
           "HYPERVISOR_WORKER": "1", "HYPERVISOR_TASK_ID": "t1", "HYPERVISOR_CLAIM_TOKEN": claimed["claim_token"]}  # fmt: skip
    for rel, event in (("models/a.sql", "PreToolUse"), ("docs/a.md", "PreToolUse"), ("models/a.sql", "PostToolUse")):
        result = subprocess.run([*HOOK[:2], "-X", "importtime", *HOOK[2:]], capture_output=True, text=True,
                                input=json.dumps(write_payload(project, rel, event)), env=env, timeout=60)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert ("outside the scope" in result.stdout) == (rel == "docs/a.md"), result.stdout
        modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                   if line.startswith("import time:")}  # fmt: skip
        assert "hypervisor.claims.resp" in modules, "the hook never talked to Redis"
        assert not off_hook_path(modules), off_hook_path(modules)
        assert not {m for m in modules if m.split(".")[0] in ("redis", "yaml")}, sorted(modules)


def test_the_redis_gate_path_loads_no_slow_standard_modules(tmp_path, spec):
    """What keeps a Redis hook call near a bare interpreter's start (bench/hooks.py): no urllib, re, hashlib,
    socket (the stdlib client uses the C module), json or typing."""
    project = tmp_path / "project"
    write_task(project / "tasks", "t1", status="active", scope=["models/**"])
    claimed = make_queue(project / "tasks", spec).claim_next("supervisor", task_id="t1")
    env = {**os.environ, "CLAUDE_PROJECT_DIR": str(project), "HYPERVISOR_BACKEND": spec, "HYPERVISOR_WORKER": "1",
           "HYPERVISOR_TASK_ID": "t1", "HYPERVISOR_CLAIM_TOKEN": claimed["claim_token"]}  # fmt: skip
    code = (
        "import io, os, sys; sys.path.insert(0, sys.argv[1]); from hypervisor.hooks.edge import run;"
        "out = io.StringIO(); run(sys.stdin.buffer, out, sys.stderr, os.environ); print(out.getvalue());"
        "print(' '.join(sorted(sys.modules)))"
    )
    for rel, event, denied in (("models/a.sql", "PreToolUse", False), ("docs/a.md", "PreToolUse", True),
                               ("models/a.sql", "PostToolUse", False)):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-S", "-c", code, str(REPO / "src")],
            timeout=60,
            env=env,
            input=json.dumps(write_payload(project, rel, event)),
            capture_output=True,
            text=True,
        )
        verdict, modules = result.stdout.rstrip("\n").rsplit("\n", 1)
        assert ("outside the scope" in verdict) == denied and not result.stderr, result.stdout + result.stderr
        loaded = set(modules.split())
        assert "hypervisor.claims.resp" in loaded, "the hook never talked to Redis"
        slow = {"urllib", "urllib.parse", "re", "hashlib", "socket", "json", "typing", "datetime", "redis"} & loaded
        assert not slow, f"the Redis hook path imported {sorted(slow)}"


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6390/0", "redis://h/3", "redis://:p%40ss@h:1/2",
                                 "redis://user:pw@h", "redis://[::1]:7000/1", "unix:///tmp/r.sock?db=4",
                                 "redis://h?db=5", "redis://h:6379"])  # fmt: skip
def test_the_hooks_read_redis_urls_as_redis_py_does(url):
    from redis.connection import parse_url

    from hypervisor.claims.redisbackend import light_address

    theirs = parse_url(url)
    ours = light_address(url)
    if "path" in theirs:
        assert (ours["unix_path"], ours["db"]) == (theirs["path"], theirs.get("db", 0))
    else:
        expected = {"host": theirs["host"], "port": theirs.get("port", 6379), "db": theirs.get("db", 0),
                    "username": theirs.get("username"), "password": theirs.get("password")}  # fmt: skip
        assert ours == expected


def test_a_unix_socket_works_for_the_queue_and_the_hooks(tmp_path, server, namespace):
    socket_path = server.config_get("unixsocket")["unixsocket"]
    spec = f"unix://{socket_path}?db=0&namespace={namespace}"
    project = tmp_path / "project"
    write_task(project / "tasks", "t1", status="active", scope=["models/**"])
    claimed = make_queue(project / "tasks", spec).claim_next("supervisor", task_id="t1", lease_seconds=30)
    assert server.get(f"{namespace}:lease:t1").decode() == claimed["claim_token"]
    env = {"HYPERVISOR_BACKEND": spec, "HYPERVISOR_WORKER": "1", "HYPERVISOR_TASK_ID": "t1",
           "HYPERVISOR_CLAIM_TOKEN": claimed["claim_token"]}  # fmt: skip
    output, _ = hook(project, write_payload(project, "docs/a.md"), env)
    assert "outside the scope of task t1" in output["reason"]
    server.pexpire(f"{namespace}:lease:t1", 5000)
    assert hook(project, write_payload(project, "models/a.sql", "PostToolUse"), env) == (None, "")
    assert server.pttl(f"{namespace}:lease:t1") > 29_000


def test_a_hook_that_cannot_reach_redis_lets_the_call_through_and_says_why(tmp_path):
    project = tmp_path / "project"
    write_task(project / "tasks", "t1", status="active")
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = {"HYPERVISOR_BACKEND": url, "HYPERVISOR_WORKER": "1", "HYPERVISOR_TASK_ID": "t1",
           "HYPERVISOR_CLAIM_TOKEN": "0" * 32}  # fmt: skip
    output, err = hook(project, write_payload(project, "a.txt"), env)
    assert output is None and "cannot reach Redis at 127.0.0.1:" in err and "goes ahead unchecked" in err


def test_nothing_to_claim_on_redis_is_exit_3(root, spec):
    write_task(root, "a", status="done")
    with pytest.raises(NothingToClaim):
        make_queue(root, spec).claim_next("w1")
    assert run_cli("claim", "--caller", "w1", "--tasks", str(root), "--backend", spec).returncode == 3
