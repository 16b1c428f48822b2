"""A `rediss://` backend in the hooks: the gate and the lease renewal work over TLS with the standard library alone
(hooks.json starts `python3 -S`: no redis-py), the server's certificate is verified by default, and the TLS options
of the URL read as redis-py reads them. Against a real redis-server with a TLS port and a private CA."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from conftest import REPO, free_port, make_queue, running_redis, write_task

from hypervisor.claims.redisbackend import RedisClaims, light_address
from hypervisor.core.errors import BackendError

HOOK = [sys.executable, "-S", str(REPO / "hooks" / "tool_hook.py")]


def openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.fail(
            "the openssl command is not installed: the TLS tests make their certificates with it", pytrace=False
        )
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True, timeout=120)


def make_pki(folder: Path) -> dict[str, Path]:
    """A private CA, a server certificate for 127.0.0.1/localhost and a client certificate, both signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=hypervisor test CA", cwd=folder)  # fmt: skip
    for name, extensions in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
                             ("client", "extendedKeyUsage=clientAuth\n")):  # fmt: skip
        (folder / f"{name}.ext").write_text(extensions)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
                f"/CN={name}", cwd=folder)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
                f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)  # fmt: skip
    (folder / "ca").mkdir()
    shutil.copy(folder / "ca.pem", folder / "ca" / "ca.pem")
    openssl("rehash", "ca", cwd=folder)  # a CA folder as ssl_ca_path wants it: certificates under hash names
    files = {name: folder / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
    return {**files, "ca": folder / "ca"}


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> tuple[int, dict[str, Path]]:
    """(TLS port, certificate files) of a private redis-server with a plain port (for the harness's PING) and a TLS
    port whose clients may show a certificate of the CA (then it is checked)."""
    folder = tmp_path_factory.mktemp("redis-tls")
    pki = make_pki(folder / "pki")
    tls_port = free_port()
    extra = (
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(pki["server.pem"]),
        "--tls-key-file",
        str(pki["server.key"]),
        "--tls-ca-cert-file",
        str(pki["ca.pem"]),
        "--tls-auth-clients",
        "optional",
    )
    with running_redis(folder, extra=extra):  # fmt: skip
        yield tls_port, pki


@pytest.fixture
def url(tls_server) -> str:
    port, pki = tls_server
    return f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={pki['ca.pem']}&namespace=tls{uuid.uuid4().hex[:10]}"


@pytest.fixture
def no_redis_py(tmp_path) -> Path:
    """A folder for PYTHONPATH holding a `redis` that cannot be imported: a system python3 without redis-py, even
    if the hook falls back to site-packages."""
    folder = tmp_path / "no-redis-py"
    (folder / "redis").mkdir(parents=True)
    (folder / "redis" / "__init__.py").write_text("raise ImportError('redis-py is not installed for this python3')\n")
    return folder


def hook(project: Path, payload: dict, env: dict, no_redis_py: Path) -> tuple[dict | None, str]:
    result = subprocess.run(HOOK, input=json.dumps(payload), capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ["PATH"], "CLAUDE_PROJECT_DIR": str(project),
                                 "PYTHONPATH": str(no_redis_py), **env})  # fmt: skip
    assert result.returncode == 0, result.stderr
    return (json.loads(result.stdout) if result.stdout.strip() else None), result.stderr


def write_payload(project: Path, rel: str, event: str = "PreToolUse") -> dict:
    return {"session_id": "s1", "transcript_path": "/dev/null", "cwd": str(project), "hook_event_name": event,
            "tool_name": "Write", "tool_input": {"file_path": str(project / rel), "content": "x\n"},
            "tool_use_id": "toolu_1", **({"tool_response": {}} if event == "PostToolUse" else {})}  # fmt: skip


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_the_hooks_gate_and_renew_over_tls_without_redis_py(tmp_path, url, no_redis_py):
    project = tmp_path / "project"
    write_task(project / "tasks", "t1", status="active", scope=["models/**"])
    queue = make_queue(project / "tasks", url)
    claimed = queue.claim_next("supervisor", task_id="t1", lease_seconds=30)
    env = {"HYPERVISOR_BACKEND": url, "HYPERVISOR_WORKER": "1", "HYPERVISOR_TASK_ID": "t1",
           "HYPERVISOR_CLAIM_TOKEN": claimed["claim_token"]}  # fmt: skip
    assert hook(project, write_payload(project, "models/a.sql"), env, no_redis_py) == (None, "")
    output, err = hook(project, write_payload(project, "README.md"), env, no_redis_py)
    assert output is not None and "outside the scope of task t1" in output["reason"], err

    server = redis.Redis.from_url(url.partition("&namespace=")[0])
    namespace = url.rpartition("namespace=")[2]
    lease = f"{namespace}:lease:t1"
    try:
        server.pexpire(lease, 5000)
        assert hook(project, write_payload(project, "models/a.sql", "PostToolUse"), env, no_redis_py) == (None, "")
        assert server.pttl(lease) > 29_000, "the post-tool hook did not renew the lease over TLS"
        server.pexpire(lease, 1)  # the lease runs out; another worker takes the task over
        wait_until(lambda: not server.exists(lease), "the lease to run out")
        queue.claim_next("w3", task_id="t1")
        output, err = hook(project, write_payload(project, "models/a.sql"), env, no_redis_py)
        assert output is not None and output["reason"].startswith("hypervisor: claim lost: lease expired"), err
    finally:
        server.close()


def test_the_tls_hook_path_loads_no_redis_py(tmp_path, url):
    project = tmp_path / "project"
    write_task(project / "tasks", "t1", status="active", scope=["models/**"])
    claimed = make_queue(project / "tasks", url).claim_next("supervisor", task_id="t1")
    code = (
        "import io, json, os, sys; sys.path.insert(0, sys.argv[1]); from hypervisor.hooks.edge import run;"
        "out, err = io.StringIO(), io.StringIO(); run(sys.stdin.buffer, out, err, os.environ);"
        "print(json.dumps([out.getvalue(), err.getvalue(), sorted(sys.modules)]))"
    )
    env = {**os.environ, "CLAUDE_PROJECT_DIR": str(project), "HYPERVISOR_BACKEND": url, "HYPERVISOR_WORKER": "1",
           "HYPERVISOR_TASK_ID": "t1", "HYPERVISOR_CLAIM_TOKEN": claimed["claim_token"]}  # fmt: skip
    result = subprocess.run([sys.executable, "-S", "-c", code, str(REPO / "src")], capture_output=True, text=True,
                            input=json.dumps(write_payload(project, "docs/a.md")), env=env, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out, err, modules = json.loads(result.stdout)
    assert "outside the scope of task t1" in out and err == "", (out, err)
    assert "hypervisor.claims.resp" in modules and "ssl" in modules
    assert not {m for m in modules if m.split(".")[0] in ("redis", "yaml", "site")}, "redis-py or site loaded"


def test_the_certificate_is_verified_by_default(tmp_path, tls_server, no_redis_py):
    port, pki = tls_server
    bare = f"rediss://127.0.0.1:{port}/0"
    with pytest.raises(BackendError, match="certificate verify failed"):
        RedisClaims(bare, str(tmp_path), light=True).ping()
    with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(bare).ping()  # redis-py agrees
    project = tmp_path / "project"
    write_task(project / "tasks", "t1", status="active", scope=["models/**"])
    env = {"HYPERVISOR_BACKEND": bare, "HYPERVISOR_WORKER": "1", "HYPERVISOR_TASK_ID": "t1",
           "HYPERVISOR_CLAIM_TOKEN": "0" * 32}  # fmt: skip
    output, err = hook(project, write_payload(project, "models/a.sql"), env, no_redis_py)
    assert output is None and "certificate verify failed" in err and "goes ahead unchecked" in err, err


def test_the_tls_options_of_the_url_are_honoured(tmp_path, tls_server):
    port, pki = tls_server
    base = f"rediss://127.0.0.1:{port}/0"
    for query in ("ssl_cert_reqs=none", f"ssl_ca_certs={pki['ca.pem']}&ssl_check_hostname=false",
                  f"ssl_ca_path={pki['ca']}",
                  f"ssl_ca_certs={pki['ca.pem']}&ssl_certfile={pki['client.pem']}&ssl_keyfile={pki['client.key']}",
                  f"ssl_ca_certs={str(pki['ca.pem']).replace('/', '%2F')}&ssl_min_version=771"):  # fmt: skip
        claims = RedisClaims(f"{base}?{query}", str(tmp_path), light=True)
        claims.ping()
        claims.close()
    with pytest.raises(BackendError, match="ssl_validate_ocsp"):
        RedisClaims(f"{base}?ssl_validate_ocsp=true", str(tmp_path), light=True).ping()
    with pytest.raises(BackendError, match="ssl_cert_reqs") as refused:
        RedisClaims(f"{base}?ssl_cert_reqs=maybe&ssl_password=s3cret", str(tmp_path), light=True).ping()
    assert "s3cret" not in str(refused.value) and "ssl_password=***" in str(refused.value)
    with pytest.raises(BackendError, match="No such file"):
        RedisClaims(f"{base}?ssl_ca_certs={tmp_path / 'missing.pem'}", str(tmp_path), light=True).ping()


@pytest.mark.parametrize("url", ["rediss://h:6380/1", "rediss://u:p%40w@h/2?ssl_ca_certs=/etc/ca%20file.pem",
                                 "rediss://h?ssl_cert_reqs=none",
                                 "rediss://h?ssl_cert_reqs=optional&ssl_check_hostname=no",
                                 "rediss://h?ssl_check_hostname=true&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
                                 "rediss://h?ssl_ca_path=/etc/ssl/certs&ssl_ciphers=HIGH&ssl_min_version=772",
                                 "rediss://h?ssl_password=s%2Bt+u&db=3"])  # fmt: skip
def test_the_hooks_read_rediss_urls_as_redis_py_does(url):
    from redis.connection import SSLConnection, parse_url

    theirs = parse_url(url)
    assert theirs.pop("connection_class") is SSLConnection
    ours = light_address(url)
    tls = ours.pop("tls")
    assert ours == {"host": theirs.pop("host"), "port": theirs.pop("port", 6379), "db": theirs.pop("db", 0),
                    "username": theirs.pop("username", None), "password": theirs.pop("password", None)}  # fmt: skip
    assert tls == theirs, "every TLS option redis-py takes from the URL, with its value"
