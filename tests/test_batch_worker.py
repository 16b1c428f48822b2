"""scripts/batch_worker.py, run as a real subprocess: claims, triage, results, crashes, dead letters, concurrency."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from hypervisor.core.errors import HypervisorError
from hypervisor.tasks import taskfile

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "batch_worker.py"
STATS_KEYS = {"queue_total", "claimed", "stale", "completed", "errors", "dead_letter", "remaining"}


# -- helpers ------------------------------------------------------------------------------------------------------
def run(batch: Path, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("HYPERVISOR_FAULT", None)
    full_env.pop("HYPERVISOR_TASKS", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=str(cwd or batch),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_json(batch: Path, *args: str, expect: int = 0, **kwargs) -> dict:
    proc = run(batch, *args, "--json", **kwargs)
    assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def stats(batch: Path) -> dict:
    return run_json(batch, "--stats")


def task(path: Path, front: str, body: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"---\n{front.strip()}\n---\n{body}", encoding="utf-8")
    return path


def write_queue(batch: Path, *lines: str) -> None:
    batch.mkdir(parents=True, exist_ok=True)
    (batch / "queue.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def results(batch: Path) -> dict[str, dict]:
    """Final-result records by item (error records excluded)."""
    out = {}
    for path in (batch / "results").glob("*.yaml"):
        if path.name.endswith(".error.yaml"):
            continue
        data = yaml.safe_load(path.read_text())
        out[data["item"]] = data
    return out


def error_records(batch: Path) -> dict[str, dict]:
    out = {}
    for path in (batch / "results").glob("*.error.yaml"):
        data = yaml.safe_load(path.read_text())
        out[data["item"]] = data
    return out


def lock_dirs(batch: Path) -> list[Path]:
    locks = batch / "locks"
    return [p for p in locks.iterdir() if p.is_dir()] if locks.exists() else []


def processed_log(batch: Path) -> list[dict]:
    path = batch / "results" / "processed.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def expire_lock(lock: Path) -> None:
    """Make a left-over lock's lease run out, as if its holder had died long ago: the store claim it records (the
    claim itself) and its owner.json copy of the lease."""
    from hypervisor.claims import records as claims

    owner_path = lock / "owner.json"
    owner = json.loads(owner_path.read_text())
    state = claims.state_dir(owner["tasks"])
    claim = claims.read_claim(state, owner["task_id"])
    claim.lease_expires_at = time.time() - 3600
    claims.write_claim(state, claim)
    owner["lease_expires_at"] = iso(datetime.now(timezone.utc) - timedelta(hours=1))
    owner_path.write_text(json.dumps(owner))


def fake_lock(batch: Path, key: str, item: str, claimed_ago: timedelta, lease_left: timedelta) -> Path:
    """A claim of `item`'s task in its store by a worker that died, as a batch worker records it in locks/."""
    from hypervisor.claims import records as claims
    from hypervisor.claims.queue import TaskQueue
    from hypervisor.tasks.store import TaskStore

    target = dry_entry(batch, item)
    taken = TaskQueue(TaskStore(target["tasks"])).claim_next("dead-worker", task_id=target["task_id"])
    state = claims.state_dir(target["tasks"])
    claim = claims.read_claim(state, target["task_id"])
    claim.claimed_at = time.time() - claimed_ago.total_seconds()
    claim.lease_expires_at = time.time() + lease_left.total_seconds()
    claims.write_claim(state, claim)
    now = datetime.now(timezone.utc)
    lock = batch / "locks" / key
    lock.mkdir(parents=True)
    owner = {"pid": 999999, "host": "elsewhere", "caller": "dead-worker", "item": item, "key": key,
             "tasks": target["tasks"], "task_id": target["task_id"], "token": taken["claim_token"],
             "claimed_at": iso(now - claimed_ago), "lease_expires_at": iso(now + lease_left),
             "attempts": taken["attempts"]}  # fmt: skip
    (lock / "owner.json").write_text(json.dumps(owner))
    return lock


def dry_entry(batch: Path, item: str) -> dict:
    """The script's dry-run view of `item`: its lock key, task store and task id."""
    report = run_json(batch, "--dry-run")
    return next(entry for entry in report["items"] if entry["item"] == item)


def key_of(batch: Path, item: str) -> str:
    """The lock key the script uses for `item`, read from its dry run (so the test does not re-implement it)."""
    return dry_entry(batch, item)["key"]


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


# -- tests --------------------------------------------------------------------------------------------------------
def test_basic_batch_triages_writes_results_and_stats(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    t = batch / "tasks"
    for i in range(3):
        task(t / f"chore-{i}.md", f"title: Bump dependency {i}\nproject: web\ntags: [chore, deps]", "Bump it.\n")
    for i in range(3):
        task(t / f"decide-{i}.md", f"title: Decide plan {i}\ntags: [decision]", "We should decide.\n")
    task(t / "owned.md", "title: Choose a vendor\nassignee: priya\nproject: ops", "Evaluate vendors.\n")
    close_body = "Text.\n\n## Close Reason\nDuplicate of #12.\n"
    task(t / "closed.md", "title: Old bug\nproject: web\nstatus: inbox", close_body)
    done_text = "---\ntitle: Shipped\nstatus: done\n---\nAll done.\n"
    (t / "done.md").write_text(done_text)
    custom_body = "Keep   this  body\n\n- exactly [[as-is]]\n"
    task(t / "custom.md", "title: Rename things\ncustom_key: {nested: [1, 2]}\n# a comment\naliases: [x]", custom_body)
    items = [f"tasks/chore-{i}.md" for i in range(3)] + [f"tasks/decide-{i}.md" for i in range(3)]
    items += ["tasks/owned.md", "tasks/closed.md", "tasks/done.md", "tasks/custom.md"]
    write_queue(batch, "# the batch", "", *items, "", "tasks/chore-0.md")  # comment, blanks and a duplicate line
    # A package named like ours in the batch folder must never be imported: the script finds its own.
    (batch / "hypervisor").mkdir()
    (batch / "hypervisor" / "__init__.py").write_text("raise ImportError('imported from the cwd')\n")

    first = run_json(batch, "--batch", "4")
    assert first["processed"] == 4 and len(first["items"]) == 4
    assert stats(batch) == {"queue_total": 10, "claimed": 0, "stale": 0, "completed": 4, "errors": 0,
                            "dead_letter": 0, "remaining": 6}  # fmt: skip

    second = run_json(batch, "--batch", "50")
    assert second["processed"] == 6
    done_items = {o["item"] for o in first["items"] + second["items"]}
    assert done_items == set(items)

    res = results(batch)
    assert set(res) == set(items)
    for item, record in res.items():
        assert record["committed"] is True and record["attempts"] == 1 and record["key"]
        assert record["worker"].startswith("batch-") and record["finished_at"]
        assert record["status"] == ("closed" if item in ("tasks/closed.md", "tasks/done.md") else "ok")
    for i in range(3):
        text = (t / f"chore-{i}.md").read_text()
        assert "assignee: agent" in text and "triage: automatable" in text
        assert text.count("[[web]]") == 1 and "Project: [[web]]" in text
        assert (t / f"decide-{i}.md").read_text().count("assignee: human") == 1
    owned = (t / "owned.md").read_text()
    assert "assignee: priya" in owned and "assignee: human" not in owned and "[[ops]]" in owned
    closed = (t / "closed.md").read_text()
    assert "status: done" in closed and "[[web]]" not in closed
    assert res["tasks/closed.md"]["close_reason"] == "Duplicate of #12."
    assert (t / "done.md").read_text() == done_text  # already done: closed, not rewritten
    custom = (t / "custom.md").read_text()
    assert custom.endswith("---\n" + custom_body)
    assert "custom_key: {nested: [1, 2]}\n# a comment\naliases: [x]\n" in custom

    assert lock_dirs(batch) == []
    assert len(processed_log(batch)) == 10
    assert stats(batch) == {"queue_total": 10, "claimed": 0, "stale": 0, "completed": 10, "errors": 0,
                            "dead_letter": 0, "remaining": 0}  # fmt: skip
    again = run(batch, "--batch", "50")
    assert again.returncode == 3, again.stdout + again.stderr
    assert "nothing to claim" in again.stdout
    assert len(processed_log(batch)) == 10


def test_same_stem_in_different_folders_does_not_collide(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    task(tmp_path / "a" / "task.md", "title: Rename the a module\nproject: alpha")
    task(tmp_path / "b" / "task.md", "title: Decide on b\nproject: beta")
    write_queue(batch, "../a/task.md", str(tmp_path / "b" / "task.md"))
    report = run_json(batch, "--dir", str(batch), "--batch", "10", cwd=tmp_path)  # run from elsewhere
    assert report["processed"] == 2
    keys = {o["item"]: o["key"] for o in report["items"]}
    for item, key in keys.items():  # <sha256(whole item)[:16]>-<stem>
        assert key == hashlib.sha256(item.encode()).hexdigest()[:16] + "-task"
        assert (batch / "locks" / (key + ".flock")).exists() and not (batch / "locks" / key).exists()
    assert len(set(keys.values())) == 2
    assert "[[alpha]]" in (tmp_path / "a" / "task.md").read_text()
    assert "[[beta]]" in (tmp_path / "b" / "task.md").read_text()
    assert len(results(batch)) == 2


def test_crash_after_lock_is_taken_over_after_expiry(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    task(batch / "t" / "one.md", "title: Rename one\nproject: p")
    write_queue(batch, "t/one.md")
    crashed = run(batch, "--batch", "5", env={"HYPERVISOR_FAULT": "batch-locked"})
    assert crashed.returncode == -9  # SIGKILL right after taking the lock
    [lock] = lock_dirs(batch)
    assert json.loads((lock / "owner.json").read_text())["attempts"] == 1
    assert results(batch) == {}

    # The lease is still live: nobody may take the item, and it is not finished.
    busy = run(batch, "--batch", "5")
    assert busy.returncode == 3, busy.stdout + busy.stderr
    s = stats(batch)
    assert (s["claimed"], s["completed"], s["remaining"]) == (1, 0, 1)

    expire_lock(lock)
    s = stats(batch)
    assert (s["claimed"], s["stale"], s["completed"], s["remaining"]) == (0, 1, 0, 1)
    report = run_json(batch, "--batch", "5")
    assert [o["status"] for o in report["items"]] == ["ok"]
    record = results(batch)["t/one.md"]
    assert record["attempts"] == 2 and record["committed"] is True
    assert "[[p]]" in (batch / "t" / "one.md").read_text()
    assert lock_dirs(batch) == []
    assert not [p for p in (batch / "locks").iterdir() if p.name.startswith(".stale-")]
    history = error_records(batch)["t/one.md"]["history"]
    assert len(history) == 1 and "lease expired" in history[0]["error"]
    assert stats(batch)["completed"] == 1 and stats(batch)["errors"] == 0


@pytest.mark.parametrize("point", ["batch-result-written", "batch-task-written"])
def test_crash_before_the_result_is_committed_is_redone(tmp_path: Path, point: str) -> None:
    batch = tmp_path / "batch"
    path = task(batch / "t" / "one.md", "title: Rename one\nproject: p", "Body.\n")
    write_queue(batch, "t/one.md")
    crashed = run(batch, "--batch", "5", env={"HYPERVISOR_FAULT": point})
    assert crashed.returncode == -9
    record = results(batch)["t/one.md"]
    assert record["committed"] is False  # a result was written first, but it does not count as done yet
    text = path.read_text()
    fields = yaml.safe_load(text.split("---\n")[1])
    assert (fields["status"], fields["attempts"]) == ("in_progress", 1)  # the claim is the store's, in the task
    assert (text.endswith("---\nBody.\n") and "triage" not in fields) is (point == "batch-result-written")
    s = stats(batch)
    assert (s["completed"], s["remaining"], s["claimed"]) == (0, 1, 1)

    expire_lock(lock_dirs(batch)[0])
    report = run_json(batch, "--batch", "5")
    assert [o["status"] for o in report["items"]] == ["ok"]
    record = results(batch)["t/one.md"]
    assert record["committed"] is True and record["attempts"] == 2 and record["recovered"] is True
    assert record["changes"] == ["assignee=agent", "triage=automatable", "linked [[p]]"]
    assert path.read_text().count("[[p]]") == 1 and path.read_text().count("assignee: agent") == 1
    assert stats(batch)["completed"] == 1 and lock_dirs(batch) == []


def test_expired_lock_is_taken_over_by_exactly_one_of_many(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    task(batch / "t" / "one.md", "title: Rename one")
    write_queue(batch, "t/one.md")
    key = key_of(batch, "t/one.md")
    fake_lock(batch, key, "t/one.md", claimed_ago=timedelta(hours=2), lease_left=-timedelta(hours=1))
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "--batch", "5", "--json", "--caller", f"w{i}"],
            cwd=batch,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(6)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    winners = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode in (0, 3), err
        winners += [o for o in json.loads(out)["items"] if o["status"] == "ok"]
    assert len(winners) == 1 and winners[0]["attempts"] == 2
    assert len(processed_log(batch)) == 1
    assert results(batch)["t/one.md"]["attempts"] == 2
    assert lock_dirs(batch) == []


def test_holder_whose_lease_was_taken_over_writes_nothing(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    path = task(batch / "t" / "one.md", "title: Rename one\nproject: p")
    write_queue(batch, "t/one.md")
    env = dict(os.environ, HYPERVISOR_PAUSE="batch-processing")
    env.pop("HYPERVISOR_FAULT", None)
    slow = subprocess.Popen([sys.executable, str(SCRIPT), "--json", "--caller", "slow"], cwd=batch, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while Path(f"/proc/{slow.pid}/stat").read_text().split(")")[-1].split()[0] != "T":  # stopped after claiming
            assert slow.poll() is None and time.monotonic() < deadline, "the holder never reached its pause point"
            time.sleep(0.05)
        expire_lock(lock_dirs(batch)[0])
        taker = run_json(batch, "--caller", "taker")
        assert [(o["status"], o["attempts"]) for o in taker["items"]] == [("ok", 2)]
    finally:
        os.kill(slow.pid, signal.SIGCONT)
    out, err = slow.communicate(timeout=60)
    assert slow.returncode == 3, err
    assert [o["status"] for o in json.loads(out)["items"]] == ["lost"]
    record = results(batch)["t/one.md"]
    assert record["worker"] == "taker" and record["attempts"] == 2
    assert [entry["worker"] for entry in processed_log(batch)] == ["taker"]
    assert path.read_text().count("[[p]]") == 1
    assert len(error_records(batch)["t/one.md"]["history"]) == 1  # only the lease expiry, nothing from "slow"
    assert lock_dirs(batch) == []


def test_broken_task_errors_then_dead_letters(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    (batch / "t").mkdir(parents=True)
    (batch / "t" / "broken.md").write_text("---\ntitle: x\ntags: [a, b\n---\nbody\n")
    task(batch / "t" / "good.md", "title: Rename good")
    write_queue(batch, "t/broken.md", "t/missing.md", "t/good.md")

    first = run_json(batch, "--batch", "1", "--max-attempts", "2")  # errors do not use up the batch of 1
    by_item = {o["item"]: o for o in first["items"]}
    assert by_item["t/broken.md"]["status"] == "error" and by_item["t/good.md"]["status"] == "ok"
    assert "not valid YAML" in by_item["t/broken.md"]["error"] and "broken.md" in by_item["t/broken.md"]["error"]
    assert "missing.md not found" in by_item["t/missing.md"]["error"]
    assert first["processed"] == 1 and first["counts"]["error"] == 2
    assert lock_dirs(batch) == []  # an error releases the lock
    errors = error_records(batch)
    assert errors["t/broken.md"]["attempts"] == 1 and len(errors["t/broken.md"]["history"]) == 1
    assert set(results(batch)) == {"t/good.md"}
    assert stats(batch) == {"queue_total": 3, "claimed": 0, "stale": 0, "completed": 1, "errors": 2,
                            "dead_letter": 0, "remaining": 2}  # fmt: skip

    second = run_json(batch, "--batch", "5", "--max-attempts", "2")
    assert {o["item"]: o["status"] for o in second["items"]} == {"t/broken.md": "dead_letter",
                                                                 "t/missing.md": "dead_letter"}  # fmt: skip
    dead = results(batch)["t/broken.md"]
    assert dead["status"] == "dead_letter" and dead["attempts"] == 2 and "not valid YAML" in dead["error"]
    assert error_records(batch)["t/broken.md"]["attempts"] == 2
    assert stats(batch) == {"queue_total": 3, "claimed": 0, "stale": 0, "completed": 1, "errors": 0,
                            "dead_letter": 2, "remaining": 0}  # fmt: skip
    assert run(batch, "--batch", "5", "--max-attempts", "2").returncode == 3  # never retried


def test_crashed_claims_count_toward_dead_letter(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    task(batch / "t" / "one.md", "title: Rename one")
    write_queue(batch, "t/one.md")
    for _ in range(2):
        assert run(batch, "--max-attempts", "2", env={"HYPERVISOR_FAULT": "batch-locked"}).returncode == -9
        expire_lock(lock_dirs(batch)[0])
    report = run_json(batch, "--max-attempts", "2")
    assert [(o["status"], o["attempts"]) for o in report["items"]] == [("dead_letter", 2)]
    assert "lease expired" in results(batch)["t/one.md"]["error"]
    fields = yaml.safe_load((batch / "t" / "one.md").read_text().split("---\n")[1])
    assert (fields["status"], fields["blocked_reason"], fields["attempts"]) == ("blocked", "max_attempts", 2)
    assert "triage" not in fields and fields.get("assignee") != "agent"  # the store's dead letter; never triaged


def test_an_error_under_the_claim_releases_it_counting_the_attempt(tmp_path: Path, monkeypatch) -> None:
    """An error once the task is claimed goes back through the store: released with the attempt counted, and the
    --max-attempts'th error is the store's dead letter (blocked, reason max_attempts)."""
    from hypervisor.core.config import Config
    from hypervisor.triage import seedbatch
    from hypervisor.triage.seedqueue import BatchFolder

    batch = tmp_path / "batch"
    path = task(batch / "t" / "one.md", "title: Rename one\nproject: p")
    write_queue(batch, "t/one.md")

    def broken_triage(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(seedbatch, "triage_edit", broken_triage)

    def run_once() -> dict:
        folder = BatchFolder(str(batch))
        folder.ensure_dirs()
        worker = seedbatch.SeedBatch(folder, Config(), str(batch / "tasks"), caller="w1", max_attempts=2)
        return worker.run(folder.read_queue(), 5)

    [first] = run_once()["items"]
    assert (first["status"], first["attempts"]) == ("error", 1) and "No space left" in first["error"]
    fields = yaml.safe_load(path.read_text().split("---\n")[1])
    assert (fields["status"], fields["attempts"], fields.get("assignee")) == ("inbox", 1, None)  # released
    assert lock_dirs(batch) == [] and set(results(batch)) == set()
    [second] = run_once()["items"]
    assert (second["status"], second["attempts"]) == ("dead_letter", 2)
    fields = yaml.safe_load(path.read_text().split("---\n")[1])
    assert (fields["status"], fields["blocked_reason"], fields["attempts"]) == ("blocked", "max_attempts", 2)
    events = [json.loads(line)["event"] for line in (batch / "t" / ".hypervisor" / "events.jsonl").open()]
    assert events == ["claimed", "released", "claimed", "dead_letter"]
    assert results(batch)["t/one.md"]["status"] == "dead_letter" and error_records(batch)["t/one.md"]["attempts"] == 2
    assert run_once()["items"] == []  # never retried


def test_eight_workers_process_each_of_200_items_exactly_once(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    items = []
    for i in range(200):
        folder = f"f{i % 4}"
        stem = f"task-{i // 4}"  # the same stems recur in all four folders
        front = f"title: Task {i}\nproject: proj{i % 3}\ntags: [{'chore' if i % 2 else 'decision'}]"
        body = "## Close Reason\nnot needed\n" if i % 10 == 0 else "Some work.\n"
        task(batch / folder / f"{stem}.md", front, body)
        items.append(f"{folder}/{stem}.md")
    write_queue(batch, *items)
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "--batch", "1000", "--json", "--caller", f"w{n}"],
            cwd=batch,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for n in range(8)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    claimed_by: dict[str, list[str]] = {}
    for n, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode in (0, 3), err
        report = json.loads(out)
        assert report["worker"] == f"w{n}"
        for outcome in report["items"]:
            assert outcome["status"] in ("ok", "closed"), outcome
            claimed_by.setdefault(outcome["item"], []).append(f"w{n}")
    assert sorted(claimed_by) == sorted(items)
    assert all(len(workers) == 1 for workers in claimed_by.values())  # no item processed twice

    res = results(batch)
    assert len(res) == 200
    for item, record in res.items():
        assert record["committed"] is True and record["attempts"] == 1
        assert [record["worker"]] == claimed_by[item]
    closed = {item for item, r in res.items() if r["status"] == "closed"}
    assert closed == {items[i] for i in range(0, 200, 10)}
    log = processed_log(batch)
    assert len(log) == 200 and len({entry["key"] for entry in log}) == 200
    for i, item in enumerate(items):
        text = (batch / item).read_text()
        if i % 10 == 0:
            assert "status: done" in text and "assignee" not in text
        else:
            assert text.count("assignee:") == 1 and text.count(f"[[proj{i % 3}]]") == 1
    assert lock_dirs(batch) == []
    assert stats(batch)["completed"] == 200 and stats(batch)["remaining"] == 0


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    task(batch / "t" / "a.md", "title: Rename a\nproject: p")
    task(batch / "t" / "b.md", "title: Old\n", "## Close Reason\nwontfix\n")
    (batch / "t" / "bad.md").write_text("no frontmatter here\n")
    write_queue(batch, "t/a.md", "t/b.md", "t/bad.md")
    before = snapshot(tmp_path)
    report = run_json(batch, "--dry-run")
    assert report["dry_run"] is True
    statuses = {o["item"]: o["status"] for o in report["items"]}
    assert statuses == {"t/a.md": "would_triage", "t/b.md": "would_close", "t/bad.md": "would_error"}
    a = next(o for o in report["items"] if o["item"] == "t/a.md")
    assert a["assignee"] == "agent" and "linked [[p]]" in a["changes"]
    text = run(batch, "--dry-run", "--batch", "1")
    assert text.returncode == 0 and "would_triage" in text.stdout and "nothing was written" in text.stdout
    assert snapshot(tmp_path) == before
    assert not (batch / "locks").exists() and not (batch / "results").exists()


def test_reclaim_stale_removes_only_old_locks(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    task(batch / "t" / "old.md", "title: Rename old")
    task(batch / "t" / "new.md", "title: Rename new")
    write_queue(batch, "t/old.md", "t/new.md")
    old_key, new_key = key_of(batch, "t/old.md"), key_of(batch, "t/new.md")
    old = fake_lock(batch, old_key, "t/old.md", claimed_ago=timedelta(hours=2), lease_left=timedelta(hours=1))
    new = fake_lock(batch, new_key, "t/new.md", claimed_ago=timedelta(seconds=5), lease_left=timedelta(minutes=30))
    tomb = batch / "locks" / f".stale-{old_key}-dead"
    tomb.mkdir()

    preview = run_json(batch, "--reclaim-stale", "10m", "--dry-run")
    assert preview["reclaimed"] == 1 and old.exists()
    report = run_json(batch, "--reclaim-stale", "10m")
    assert report["reclaimed"] == 1 and [lock["key"] for lock in report["locks"]] == [old_key]
    assert not old.exists() and new.exists() and not tomb.exists()
    assert error_records(batch)["t/old.md"]["attempts"] == 1  # the reclaimed claim counts as an attempt
    assert results(batch) == {}  # --reclaim-stale alone processes nothing

    run_report = run_json(batch, "--batch", "5")
    assert [(o["item"], o["attempts"]) for o in run_report["items"]] == [("t/old.md", 2)]
    assert new.exists()  # still claimed by its (live) holder
    s = stats(batch)
    assert (s["claimed"], s["completed"], s["remaining"]) == (1, 1, 1)


def test_stats_json_shape_and_usage_errors(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    task(batch / "t" / "a.md", "title: a")
    write_queue(batch, "t/a.md")
    s = stats(batch)
    assert set(s) == STATS_KEYS and all(isinstance(v, int) for v in s.values())
    assert s["queue_total"] == 1 and s["remaining"] == 1
    text = run(batch, "--stats")
    assert text.returncode == 0 and "queue_total: 1" in text.stdout and "remaining: 1" in text.stdout

    missing = run(tmp_path, "--batch", "5")
    assert missing.returncode == 1
    assert f"queue file {tmp_path / 'queue.txt'} not found: create it with one task path per line" in missing.stderr
    assert run(batch, "--lease", "soon").returncode == 2
    assert run(batch, "--batch", "0").returncode == 2
    assert run(batch, "--stats", "--batch", "3").returncode == 2
    (batch / "bad-rules.yaml").write_text("assignees: nobody\n")
    bad = run(batch, "--rules", "bad-rules.yaml")
    assert bad.returncode == 2 and "bad-rules.yaml" in bad.stderr  # a settings file to fix: a usage error


def test_task_ids_resolve_through_the_store_and_use_its_lock(tmp_path: Path) -> None:
    from hypervisor.claims.queue import TaskQueue
    from hypervisor.tasks.store import TaskStore

    root = tmp_path / "tasks"
    task(root / "proj" / "fix-typo.md", "title: Fix typo in docs\nproject: docs-site")
    task(root / "held.md", "title: Rename held\nstatus: active")
    batch = tmp_path / "batch"
    write_queue(batch, "fix-typo", "held", "no-such-task")
    assert run(batch, "--batch", "5").returncode == 1  # no task root: clear error, nothing claimed
    assert "does not exist" in run(batch, "--batch", "5").stderr

    TaskQueue(TaskStore(str(root))).claim_next("agent-7", task_id="held")
    report = run_json(batch, "--batch", "5", "--tasks", str(root))
    by_item = {o["item"]: o for o in report["items"]}
    assert by_item["fix-typo"]["status"] == "ok" and by_item["fix-typo"]["task_id"] == "fix-typo"
    assert by_item["held"]["status"] == "skipped" and "agent-7" in by_item["held"]["error"]
    assert by_item["no-such-task"]["status"] == "error" and "no-such-task" in by_item["no-such-task"]["error"]
    assert "[[docs-site]]" in (root / "proj" / "fix-typo.md").read_text()
    assert (root / ".hypervisor" / "locks" / "fix-typo.lock").exists()  # the store's own per-task lock
    assert "held" not in error_records(batch)  # a task held in the store is skipped, no attempt counted
    s = run_json(batch, "--stats", env={"HYPERVISOR_TASKS": str(root)})
    assert (s["completed"], s["errors"], s["remaining"]) == (1, 1, 2)


@pytest.mark.parametrize("line", ["has space", "../.."])
def test_bad_queue_line_is_named(tmp_path: Path, line: str) -> None:
    batch = tmp_path / "batch"
    write_queue(batch, line)
    proc = run(batch, "--batch", "1")
    if line == "has space":
        assert proc.returncode == 1 and "line 1" in proc.stderr and "has space" in proc.stderr
    else:  # a path: resolved against the batch folder, fails as an item (a directory), never fatally
        assert proc.returncode == 0 and "is a directory" in proc.stdout


def test_script_finds_the_package_from_its_own_location(tmp_path: Path) -> None:
    """Without site-packages (python -S) `import hypervisor` fails, so the script must add <script>/../src."""
    batch = tmp_path / "batch"
    task(batch / "t" / "a.md", "title: Rename a")
    write_queue(batch, "t/a.md")
    yaml_dir = str(Path(yaml.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=yaml_dir)
    probe = subprocess.run([sys.executable, "-S", "-c", "import hypervisor"], env=env, capture_output=True)
    assert probe.returncode != 0  # the premise: the package is not importable this way
    proc = subprocess.run([sys.executable, "-S", str(SCRIPT), "--stats", "--json"], cwd=batch, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["queue_total"] == 1


def test_same_effect_on_a_store_as_hypervisor_triage(tmp_path: Path) -> None:
    """batch_worker.py and `hypervisor triage` on two copies of examples/tasks leave the same task files and events."""
    from conftest import REPO, run_cli

    by_cli, batch = tmp_path / "cli" / "tasks", tmp_path / "batch"
    by_batch = batch / "tasks"
    for root in (by_cli, by_batch):
        shutil.copytree(REPO / "examples" / "tasks", root)
    files = sorted(str(p.relative_to(by_batch)) for p in by_batch.rglob("*.md"))
    write_queue(batch, *(f"tasks/{name}" for name in files))
    run_cli("triage", "--tasks", str(by_cli), check=0)
    report = run_json(batch, "--batch", "100", "--caller", "batch-w1", "--tasks", str(by_batch))
    assert report["counts"]["ok"] == 26 and report["counts"]["closed"] == 10  # 2 by Close Reason, 8 done already

    def normalised(root: Path, worker: str) -> dict[str, str]:
        texts = {}
        for name in files:
            text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<time>", (root / name).read_text())
            text = text.replace(f" · {worker} · ", " · <worker> · ")
            texts[name] = re.sub(r" · took [^\n]*", " · took <d>", text)
        return texts

    def fields(root: Path) -> dict[str, tuple]:
        out = {}
        for name in files:
            try:
                doc = taskfile.read_doc(str(root / name))
            except HypervisorError:
                continue  # examples/tasks/malformed: neither front touches it (the texts are compared below)
            data = doc.data
            out[name] = (data.get("status"), data.get("assignee"), data.get("project"), "completed" in data,
                         data.get("attempts"), "## Worker log" in doc.body)  # fmt: skip
        return out

    def event_kinds(root: Path) -> dict[str, list]:
        kinds: dict[str, list] = {}
        for line in (root / ".hypervisor" / "events.jsonl").read_text().splitlines():
            event = json.loads(line)
            kinds.setdefault(event["task"], []).append((event["event"], event.get("attempts")))
        return kinds

    cli_fields, batch_fields = fields(by_cli), fields(by_batch)
    assert batch_fields == cli_fields
    statuses = [f[0] for f in cli_fields.values()]
    assert statuses.count("active") == 26 and sum(f[3] and f[5] for f in cli_fields.values()) == 2  # not vacuous
    assert normalised(by_batch, "batch-w1") == normalised(by_cli, "triage")
    assert event_kinds(by_batch) == event_kinds(by_cli)
    assert sorted({kind for kinds in event_kinds(by_cli).values() for kind, _ in kinds}) == [
        "claimed", "completed", "released"]  # fmt: skip
