"""The board at 10,000 tasks in a real chromium: first render and an update's delay (a task file changed on disk to
the card in its new column), each beside what it is made of (the /api/state fetch, the server's build, the poll)."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import ForeignLoad, emit, source_fingerprint

CHROMIUM = "/usr/bin/chromium"
SIZE = 10000
SUBFOLDERS = 10
UPDATES = 7
STATUSES = ("active", "inbox", "done", "done", "blocked", "review", "cancelled", "in_progress")


def task_text(i: int) -> str:
    depends = f"depends_on: [task-{i - 1:06d}]\n" if i % 9 == 0 and i else ""
    return (
        "---\n"
        f"title: Task {i} - tidy up component {i % 97}\n"
        f"status: {STATUSES[i % len(STATUSES)]}\n"
        f"priority: {i % 5}\n"
        f"project: {('alpha', 'beta', 'gamma', 'delta', 'epsilon')[i % 5]}\n"
        f"{depends}"
        f"created: 2026-{1 + i % 12:02d}-{1 + i % 28:02d}\n"
        "---\n"
        f"# Task {i}\n\nBody text for task {i}.\n"
    )


def make_store(base: str, size: int) -> str:
    root = os.path.join(base, "tasks")
    for sub in range(SUBFOLDERS):
        os.makedirs(os.path.join(root, f"area-{sub}"))
    for i in range(size):
        with open(os.path.join(root, f"area-{i % SUBFOLDERS}", f"task-{i:06d}.md"), "w", encoding="utf-8") as f:
            f.write(task_text(i))
    return root


def start_board(root: str) -> tuple[subprocess.Popen, str]:
    hypervisor = os.path.join(os.path.dirname(sys.executable), "hypervisor")
    proc = subprocess.Popen([hypervisor, "board", "--tasks", root, "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(600)
    match = re.search(r"(http://\S+) ", line[0] if line else "")
    if not match:
        proc.kill()
        sys.exit(f"the board did not start: {line} {proc.communicate()[1]}")
    return proc, match.group(1)


def fetch_ms(url: str, count: int = 7) -> tuple[float, int]:
    """Median wall time of GET /api/state from Python, and the body's size."""
    times = []
    size = 0
    for _ in range(count):
        start = time.perf_counter()
        with urllib.request.urlopen(url + "api/state") as answer:
            size = len(answer.read())
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), size


def rewrite_status(path: str, status: str) -> None:
    """A person's save: the status line changed, written atomically as an editor (or a worker) does."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    text = re.sub(r"^status: .*$", f"status: {status}", text, count=1, flags=re.M)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


WATCH = """(id) => { window.__seenAt = null; const look = () => {
  if (document.querySelector('#column-done #card-' + CSS.escape(id))) window.__seenAt = Date.now();
  else requestAnimationFrame(look); }; look(); }"""


def measure(size: int) -> dict:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="hypervisor-bench-board-") as base:
        root = make_store(base, size)
        load = ForeignLoad()
        started = time.perf_counter()
        proc, url = start_board(root)
        start_s = time.perf_counter() - started
        try:
            state = json.loads(urllib.request.urlopen(url + "api/state").read())
            python_fetch, body_size = fetch_ms(url)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
                # bypass_csp: Playwright's wait_for_function evaluates a string, which the board's CSP forbids
                page = browser.new_page(viewport={"width": 1600, "height": 1000}, bypass_csp=True)
                page.set_default_timeout(600_000)
                renders, fetches = [], []
                for _ in range(3):
                    page.goto(url)
                    page.wait_for_function("document.body.dataset.rendered !== undefined")
                    renders.append(float(page.evaluate("document.body.dataset.rendered")))
                    fetches.append(page.evaluate(
                        "performance.getEntriesByType('resource').filter(e => e.name.endsWith('/api/state'))[0].duration"
                    ))  # fmt: skip
                cards = page.locator(".card").count()
                ready = [t for t in state["tasks"] if t["column"] == "ready"]
                delays = []
                builds = []
                for task in ready[:UPDATES]:
                    page.evaluate(WATCH, task["id"])
                    path = os.path.join(root, task["path"])
                    written = time.time() * 1000
                    rewrite_status(path, "done")
                    page.wait_for_function("window.__seenAt !== null")
                    delays.append(page.evaluate("window.__seenAt") - written)
                    builds.append(json.loads(urllib.request.urlopen(url + "api/state").read())["build_ms"])
                browser.close()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        foreign = load.stop()
    first_render = statistics.median(renders)
    browser_fetch = statistics.median(fetches)
    delay = statistics.median(delays)
    build = statistics.median(builds)
    return {
        "tasks": size, "cards_rendered": cards, "state_bytes": body_size, "board_start_s": round(start_s, 2),
        "first_render_ms": round(first_render, 1), "api_state_fetch_in_browser_ms": round(browser_fetch, 1),
        "api_state_fetch_python_ms": round(python_fetch, 1),
        "first_render_per_fetch": round(first_render / browser_fetch, 2) if browser_fetch else None,
        "update_delay_ms": round(delay, 1), "update_delays_ms": [round(d) for d in delays],
        "state_build_ms": round(build, 1), "poll_ms": 500,
        "update_delay_per_poll": round(delay / 500, 2),
        "update_delay_per_build_and_fetch": round(delay / (build + browser_fetch), 2),
        "foreign_cpu_per_s": round(foreign, 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not os.path.exists(CHROMIUM):
        sys.exit(f"{CHROMIUM} is missing: apt-get install chromium (python3 dev.py test installs it as root)")
    result = measure(args.size)
    report = {"benchmark": "board", "source": source_fingerprint(), **result}
    lines = [
        f"board at {result['tasks']} tasks ({result['cards_rendered']} cards on the page, /api/state "
        f"{result['state_bytes'] / 1e6:.1f} MB; board up in {result['board_start_s']} s)",
        f"  first render   {result['first_render_ms']:8.1f} ms from navigation  = "
        f"{result['first_render_per_fetch']}x the page's own /api/state fetch ({result['api_state_fetch_in_browser_ms']} ms; "
        f"{result['api_state_fetch_python_ms']} ms from Python)",
        f"  update delay   {result['update_delay_ms']:8.1f} ms file saved -> card in Done (median of "
        f"{len(result['update_delays_ms'])}: {result['update_delays_ms']})",
        f"                 = {result['update_delay_per_poll']}x the watcher's {result['poll_ms']} ms poll, "
        f"{result['update_delay_per_build_and_fetch']}x one state build ({result['state_build_ms']} ms) + one fetch",
        f"  other processes' CPU beside it: {result['foreign_cpu_per_s']} CPU-s/s",
    ]
    emit("\n".join(lines), report, args.json)


if __name__ == "__main__":
    main()
