"""`hypervisor board`: a real board process, a real `hypervisor run` beside it and a real browser (Debian's chromium
driven by Playwright through executable_path), plus its HTTP edge: the token, read-only routes, paths outside."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import HYPERVISOR, run_cli, wait_for, write_task

from hypervisor.frontends.board.registry import board_file, running_board
from hypervisor.frontends.board.render import body_html

CHROMIUM = "/usr/bin/chromium"  # Debian's package; `python3 dev.py test` installs it when run as root
WORKER = str(Path(__file__).with_name("scripted_worker.py"))
SCRIPTED = f"{sys.executable} {WORKER} task"
WAIT = 120.0  # seconds a wait may take before the test fails: a guard against hanging, never a speed claim
XSS_TITLE = "Title <script>window.__pwned = 1</script> <img src=x onerror=window.__pwned=2>"


def cli_env() -> dict:
    env = dict(os.environ)
    env.pop("HYPERVISOR_TASKS", None)
    return env


def get(url: str, path: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    """A request with `path` sent exactly as given (no client-side normalising of `..` or %2e)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request(method, path, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def _answers(url: str, headers: dict | None = None) -> bool:
    try:
        return get(url, "/api/state", headers)[0] == 200
    except OSError:
        return False


@contextlib.contextmanager
def board(root: Path, *args: str, headers: dict | None = None, port: int = 0) -> Iterator[str]:
    """A real `hypervisor board` process (on a free port unless `port`); its URL once it answers. Stopped with
    SIGINT (Ctrl-C) on leaving, which must end it cleanly (exit 0) and take its board.json away."""
    proc = subprocess.Popen([*HYPERVISOR, "board", "--tasks", str(root), "--port", str(port), *args], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(WAIT)
        match = re.search(r"(http://\S+?)(\?token=\S+)? ", line[0] if line else "")
        if not match:
            proc.kill()
            raise AssertionError(f"the board printed no URL: {line!r} {proc.communicate()[1]}")
        url = match.group(1)
        wait_for(lambda: _answers(url, headers) or proc.poll() is not None, "the board to answer", WAIT)
        assert proc.poll() is None, proc.communicate()
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("Ctrl-C did not stop the board") from None
    assert proc.returncode == 0, (proc.returncode, err)
    assert "Traceback" not in err and "ERROR" not in err, err
    assert not os.path.exists(board_file(str(root / ".hypervisor")))


def start_run(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*HYPERVISOR, "run", "--tasks", str(root), *args], cwd=root.parent, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


# -- the page in a real browser ----------------------------------------------------------------------------------
@pytest.fixture
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (python3 dev.py test does it when run as "
                    "root); the board is proven in a real browser only", pytrace=False)  # fmt: skip
    return CHROMIUM


def test_the_board_follows_a_real_run_live_in_a_real_browser(root, tmp_path, chromium, cpu_hog):
    from playwright.sync_api import sync_playwright

    release = tmp_path / "release-slow"
    write_task(root, "slow", title="The slow task", project="web", priority=1,
               script=f"edit-wait-complete {release}", body="Waits for the test.\n")  # fmt: skip
    write_task(root, "after", title="After the slow one", project="web", depends_on=["slow"], script="complete")
    write_task(root, "xss", title=XSS_TITLE, status="review", project="ops",
               body="See [[slow]] and [[after|the next one]].\n\n<script>window.__pwned = 3</script>\n\n"
                    "[a link](javascript:window.__pwned=4)\n")  # fmt: skip
    write_task(root, "stuck", title="Stuck on a person", status="blocked", project="ops")
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with board(root) as url:
        run = start_run(root, "--agent", SCRIPTED, "--workers", "1", "--ids", "slow,after")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                                     args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.set_default_timeout(WAIT * 1000)
                page.goto(url)
                # the running worker's card: its task, attempt, last tool call, files and tokens from its log
                row = page.locator('#workers tr.worker[data-task="slow"]')
                row.locator("td.last-call", has_text="Edit").wait_for()
                assert row.locator("td.files").inner_text() == "src/board_demo.py"
                assert row.locator("td.tokens").inner_text() == "1234"
                assert row.locator("td").nth(2).inner_text() == "1"
                assert row.locator('a[href^="/logs/"]').count() == 1
                page.locator("#column-in_progress #card-slow").wait_for()
                page.locator("#column-waiting #card-after").wait_for()
                page.locator("#column-blocked #card-stuck").wait_for()
                # a title holding <script> is text, and nothing in it ran
                assert page.locator("#column-review #card-xss .title").inner_text() == XSS_TITLE
                assert page.evaluate("window.__pwned") is None
                page.screenshot(path=str(shots / "board-running.png"), full_page=True)

                page.evaluate("window.__noReload = 42")  # a reload would lose it
                release.write_text("go")
                page.locator("#column-done #card-slow").wait_for()
                page.locator("#column-done #card-after").wait_for()
                page.locator('#run-title[data-status="finished"]').wait_for()
                assert page.evaluate("window.__noReload") == 42
                assert "null" not in page.locator("#run").inner_text()
                page.locator("#runs-table tbody tr").first.wait_for()
                page.screenshot(path=str(shots / "board-done.png"), full_page=True)

                # the filters: by project, then by text
                page.select_option("#filter-project", "ops")
                assert page.locator(".card").count() == 2
                page.fill("#filter-text", "person")
                assert [c.get_attribute("data-task") for c in page.locator(".card").all()] == ["stuck"]
                page.select_option("#filter-project", "")
                page.fill("#filter-text", "")

                # a task page: its body rendered and escaped, wikilinks as links, its log and events
                page.click("#column-review #card-xss a.task-link")
                page.wait_for_url(f"{url}task/xss")
                page.locator("#task-body a.wikilink").first.wait_for()
                links = page.locator("#task-body a.wikilink")
                assert [links.nth(i).get_attribute("href") for i in range(links.count())] == ["/task/slow",
                                                                                             "/task/after"]  # fmt: skip
                assert "<script>window.__pwned = 3</script>" in page.locator("#task-body").inner_text()
                assert page.locator('#task-body a[href^="javascript"]').count() == 0
                assert page.locator("#task-title").inner_text() == XSS_TITLE
                assert page.evaluate("window.__pwned") is None
                page.screenshot(path=str(shots / "task-xss.png"), full_page=True)

                page.goto(f"{url}task/slow")
                page.locator("#task-events tbody tr").first.wait_for()
                page.locator("#task-log", has_text="edit-wait-complete").wait_for()  # the latest log's end, inline
                events = page.locator("#task-events").inner_text()
                assert "claimed" in events and "completed" in events, events
                log_link = page.locator('#task-logs a[href^="/logs/"]').first
                log_link.click()
                assert "worker w1-" in page.locator("body").inner_text()
                page.goto(f"{url}task/slow")
                page.locator("#task-events tbody tr").first.wait_for()
                page.screenshot(path=str(shots / "task-slow.png"), full_page=True)
                browser.close()
        finally:
            if run.poll() is None:
                release.write_text("go")
            out, err = run.communicate(timeout=WAIT)
        assert run.returncode == 0, (out, err)
        assert f"this run is live on the board: {url}" in err
    for name in ("board-running.png", "board-done.png", "task-xss.png", "task-slow.png"):
        assert (shots / name).stat().st_size > 1000
    print(f"screenshots in {shots}")


def test_the_page_reconnects_by_itself_when_the_board_comes_back(root, chromium, cpu_hog):
    from playwright.sync_api import sync_playwright

    write_task(root, "a", title="First")
    write_task(root, "b", title="Second")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.set_default_timeout(WAIT * 1000)
        with board(root) as url:
            page.goto(url)
            page.locator('#connection[data-state="live"]').wait_for()
            page.locator("#column-ready #card-a").wait_for()
            page.evaluate("window.__noReload = 7")
        page.locator('#connection:not([data-state="live"])').wait_for()  # the board is gone
        (root / "a.md").write_text("---\ntitle: First\nstatus: done\n---\nDone while the board was away.\n")
        with board(root, port=urlsplit(url).port):
            page.locator('#connection[data-state="live"]').wait_for()
            page.locator("#column-done #card-a").wait_for()
            (root / "b.md").write_text("---\ntitle: Second\nstatus: blocked\n---\nBlocked now.\n")
            page.locator("#column-blocked #card-b").wait_for()
            assert page.evaluate("window.__noReload") == 7
        browser.close()


# -- the HTTP edge -----------------------------------------------------------------------------------------------
def test_a_host_beyond_loopback_needs_a_token_and_the_refusal_offers_one(root):
    write_task(root, "a", title="A")
    refused = run_cli("board", "--tasks", str(root), "--host", "0.0.0.0", "--port", "0", check=2)
    assert "--host 0.0.0.0" in refused.stderr and "--token" in refused.stderr, refused.stderr
    assert not os.path.exists(board_file(str(root / ".hypervisor")))
    # the advice, followed: the command it names serves the board, behind the token it names
    command = shlex.split(re.search(r"`hypervisor board ([^`]+)`", refused.stderr).group(1))
    token = command[command.index("--token") + 1]
    with board(root, *command, headers={"x-hypervisor-token": token}) as url:
        assert get(url, "/api/state")[0] == 401
        assert get(url, "/api/state", {"x-hypervisor-token": token})[0] == 200


def test_a_token_is_checked_on_every_route(root):
    write_task(root, "a", title="A")
    token = "correct-horse-battery"
    with board(root, "--token", token, headers={"x-hypervisor-token": token}) as url:
        assert running_board(str(root / ".hypervisor")) == f"{url}?token={token}"
        for path in ("/", "/api/state", "/api/task/a", "/task/a", "/static/board.js", "/api/events", "/nope"):
            for headers in ({}, {"x-hypervisor-token": "wrong-token-123"}, {"authorization": "Bearer wrong"},
                            {"cookie": "hypervisor_board=wrong"}):  # fmt: skip
                status, _, body = get(url, path, headers)
                assert status == 401, (path, headers, status)
                assert b"token" in body
            assert get(url, path + "?token=wrong-token-123")[0] == 401
        assert get(url, "/api/state", {"authorization": f"Bearer {token}"})[0] == 200
        # ?token= once: a cookie and the URL without it; the cookie then opens every page
        status, headers, _ = get(url, f"/task/a?token={token}")
        assert status == 303 and headers["location"] == "/task/a"
        cookie = headers["set-cookie"].split(";")[0]
        assert "httponly" in headers["set-cookie"].lower()
        assert get(url, "/task/a", {"cookie": cookie})[0] == 200
        assert get(url, "/api/state", {"cookie": cookie})[0] == 200
        # a second board on the same port: refused, naming the address and what to do
        taken = run_cli("board", "--tasks", str(root), "--port", str(urlsplit(url).port), check=2)
        assert f"127.0.0.1:{urlsplit(url).port}" in taken.stderr and "--port 0" in taken.stderr, taken.stderr


def test_the_board_changes_nothing_and_serves_nothing_outside_its_folders(root, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-CONTENT")
    write_task(root, "a", title="A", script="complete")
    write_task(root, "b", title="B")
    (root / "linked.md").symlink_to(tmp_path / "outside.md")
    (tmp_path / "outside.md").write_text("---\ntitle: SECRET-CONTENT\n---\nSECRET-CONTENT\n")
    run_cli("run", "--tasks", str(root), "--agent", SCRIPTED, "--ids", "a", check=0)
    runs_dir = root / ".hypervisor" / "runs"
    (run_id,) = os.listdir(runs_dir)
    logs = runs_dir / run_id / "logs"
    (logs / "evil.1.log").symlink_to(secret)
    (tmp_path / "fake-run" / "logs").mkdir(parents=True)
    (tmp_path / "fake-run" / "run.json").write_text("{}")
    (tmp_path / "fake-run" / "logs" / "x.1.log").write_text("SECRET-CONTENT")
    (runs_dir / "99999999-000000-evil").symlink_to(tmp_path / "fake-run")
    before = {p: p.read_bytes() for p in root.glob("*.md") if not p.is_symlink()}

    with board(root) as url:
        assert get(url, f"/logs/{run_id}/a.1.log")[0] == 200  # the real log is served
        bad = [
            "/task/..", "/task/%2e%2e", "/task/..%2f..%2fsecret.txt", "/task/%2e%2e%2f%2e%2e%2fsecret.txt",
            "/task/../../secret.txt", "/task/linked", "/api/task/..", "/api/task/%2e%2e", "/api/task/linked",
            "/api/task/..%2f..%2fsecret.txt", "/api/task/%2E%2E%2F%2E%2E%2Fsecret.txt", "/api/task/../../secret.txt",
            "/static/..", "/static/%2e%2e", "/static/../board.html", "/static/%2e%2e%2fboard.html",
            "/static/..%2fapp.py", "/static/board.html", "/static/app.py", "/static/%2e%2e%2f%2e%2e%2fsecret.txt",
            f"/logs/{run_id}/..", f"/logs/{run_id}/%2e%2e", f"/logs/{run_id}/../run.json",
            f"/logs/{run_id}/%2e%2e%2frun.json", f"/logs/{run_id}/..%2f..%2f..%2fa.md", "/logs/../runs",
            f"/logs/%2e%2e/{run_id}", f"/logs/..%2f{run_id}/a.1.log", f"/logs/{run_id}/evil.1.log",
            "/logs/99999999-000000-evil/x.1.log", f"/logs/{run_id}/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
            "/../secret.txt", "/%2e%2e/secret.txt", "/api/state/..", "/api/%2e%2e/state", "/api/events/..",
        ]  # fmt: skip
        for path in bad:
            status, _, body = get(url, path)
            assert status == 404, (path, status, body[:200])
            assert b"SECRET" not in body, path
        state = json.loads(get(url, "/api/state")[2])
        assert "SECRET" not in json.dumps(state)
        assert {t["id"] for t in state["tasks"]} == {"a", "b"}
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for path in ("/api/state", "/api/task/b", "/task/b", "/"):
                assert get(url, path, method=method)[0] == 405, (method, path)
        assert get(url, "/", {"host": "attacker.example"})[0] == 403  # DNS rebinding: a foreign Host is refused
        assert get(url, "/", {"host": "attacker.example:80"})[0] == 403
        assert get(url, "/", {"host": "localhost:1234"})[0] == 200
        assert get(url, "/", {"host": "[::1]:1234"})[0] == 200
    assert {p: p.read_bytes() for p in root.glob("*.md") if not p.is_symlink()} == before


def test_a_task_body_is_rendered_escaped_with_wikilinks():
    html = body_html("# Hi <b>x</b>\n\n[[task-a]], [[task-b|B]], [[not a task]] and [x](javascript:alert(1))\n"
                     "<script>alert(1)</script>\n\n`[[code]]`\n")  # fmt: skip
    assert "<b>" not in html and "&lt;b&gt;" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert '<a href="/task/task-a" class="wikilink">task-a</a>' in html
    assert '<a href="/task/task-b" class="wikilink">B</a>' in html
    assert "[[not a task]]" in html and "javascript:" not in html.split("[x]")[0]
    assert 'href="javascript' not in html
    assert "<code>[[code]]</code>" in html
