"""The SQLite task index: every change an editor can make is seen (at once by `list`, within FRESH_FOR by a claim),
a claim never hands out a task or passes a dependency on the index's word alone, and a bad index file is rebuilt."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HYPERVISOR, write_task

from hypervisor.claims.queue import TaskQueue
from hypervisor.tasks.index import TaskIndex, index_path
from hypervisor.tasks.store import FRESH_FOR, Progress, TaskStore


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """The real CLI in its own process, as an agent's shell loop runs it."""
    return subprocess.run(
        [*HYPERVISOR, *args[:1], "--tasks", str(root), *args[1:]], capture_output=True, text=True, timeout=120
    )


def claimed_id(root: Path, caller: str = "w1") -> str | None:
    result = cli(root, "claim", "--caller", caller, "--json")
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)["id"]


def listed(root: Path, *args: str) -> list[str]:
    result = cli(root, "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [task["id"] for task in json.loads(result.stdout)]


def age_index(root: Path, seconds: float = FRESH_FOR + 1) -> None:
    """Make the index look walked `seconds` ago, as if that much time had passed since the last command."""
    index = TaskIndex(os.path.join(root, ".hypervisor"))
    index.apply([], walked_at=time.time() - seconds)
    index.close()


def edit_in_place(path: Path, old: str, new: str) -> None:
    """What an editor that writes in place does: same inode, new bytes (the folder's mtime does not change)."""
    text = path.read_text(encoding="utf-8")
    assert old in text
    with open(path, "r+", encoding="utf-8") as handle:
        handle.write(text.replace(old, new))
        handle.truncate()


@pytest.fixture
def store_of_three(root: Path) -> Path:
    write_task(root, "a", title="A", status="active", priority=1)
    write_task(root, "b", title="B", status="active", priority=2, folder="sub")
    write_task(root, "c", title="C", status="active", priority=3, folder="sub/deeper")
    assert listed(root) == ["a", "b", "c"]  # builds the index
    return root


def test_a_task_made_done_in_place_is_never_handed_out_even_from_a_fresh_index(store_of_three):
    root = store_of_three
    edit_in_place(root / "a.md", "status: active", "status: done")
    assert claimed_id(root) == "b"  # the index still says `a` is active: it is re-read under its lock and skipped


def test_a_dependency_reopened_in_place_is_checked_against_its_file(root):
    write_task(root, "base", title="Base", status="done", priority=3)
    write_task(root, "next", title="Next", status="active", priority=0, depends_on=["[[base]]"])
    assert listed(root, "--ready") == ["next"]
    edit_in_place(root / "base.md", "status: done", "status: active")
    refused = cli(root, "claim", "next", "--caller", "w1")
    assert refused.returncode != 0 and "base (active)" in refused.stderr + refused.stdout
    assert claimed_id(root) == "base"  # `next` waits; `base`, active in its file, is found by the fresh walk


@pytest.mark.parametrize("change", ["in-place priority", "new file in a subfolder", "rename", "delete", "move"])
def test_a_claim_sees_every_kind_of_change_once_the_index_is_older_than_fresh_for(store_of_three, change):
    root = store_of_three
    if change == "in-place priority":
        edit_in_place(root / "sub" / "deeper" / "c.md", "priority: 3", "priority: 0")
        expected, listing = "c", ["c", "a", "b"]
    elif change == "new file in a subfolder":
        write_task(root, "d", title="D", status="active", priority=0, folder="new/folder")
        expected, listing = "d", ["d", "a", "b", "c"]
    elif change == "rename":  # a person renames a.md: the id follows the file name
        os.rename(root / "a.md", root / "a2.md")
        expected, listing = "a2", ["a2", "b", "c"]
    elif change == "delete":
        os.unlink(root / "a.md")
        expected, listing = "b", ["b", "c"]
    else:  # moved to another folder, id kept
        os.rename(root / "a.md", root / "sub" / "deeper" / "a.md")
        expected, listing = "a", ["a", "b", "c"]
    assert listed(root) == listing  # `list` walks: it sees the change at once
    age_index(root)
    assert claimed_id(root) == expected


@pytest.mark.parametrize("change", ["in-place priority", "new file in a subfolder", "delete"])
def test_within_fresh_for_a_claim_still_hands_out_only_what_its_file_allows(store_of_three, change):
    """Within FRESH_FOR the queue order may be the index's, but what is handed out is checked in its file."""
    root = store_of_three
    if change == "in-place priority":
        edit_in_place(root / "sub" / "deeper" / "c.md", "priority: 3", "priority: 0")
    elif change == "new file in a subfolder":
        write_task(root, "d", title="D", status="active", priority=0, folder="new/folder")
    else:
        os.unlink(root / "a.md")
    got = [claimed_id(root, f"w{n}") for n in range(5)]
    handed = [task for task in got if task]
    assert len(handed) == len(set(handed))
    expected = {"in-place priority": {"a", "b", "c"}, "new file in a subfolder": {"a", "b", "c", "d"},
                "delete": {"b", "c"}}[change]  # fmt: skip
    assert set(handed) == expected  # every claimable task, once: "nothing to claim" comes only after a fresh walk


def test_claim_by_id_finds_a_task_moved_since_the_index_saw_it(store_of_three):
    root = store_of_three
    os.rename(root / "sub" / "b.md", root / "b.md")
    assert claimed_id_of(root, "b") == "b"


def claimed_id_of(root: Path, task_id: str) -> str | None:
    result = cli(root, "claim", task_id, "--caller", "w1", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["id"]


def test_a_corrupt_index_is_rebuilt(store_of_three):
    root = store_of_three
    path = index_path(str(root / ".hypervisor"))
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    Path(path).write_bytes(b"this is not a database" * 100)
    assert listed(root) == ["a", "b", "c"]
    assert sqlite3.connect(path).execute("SELECT count(*) FROM files").fetchone()[0] == 3


def test_an_index_of_another_schema_is_replaced(store_of_three):
    root = store_of_three
    db = sqlite3.connect(index_path(str(root / ".hypervisor")))
    db.execute("UPDATE meta SET value = '0' WHERE key = 'version'")
    db.commit()
    db.close()
    assert listed(root) == ["a", "b", "c"]


def test_duplicate_ids_are_neither_listed_nor_claimed(root):
    write_task(root, "twin", title="One", status="active", priority=0)
    write_task(root, "twin", title="Two", status="active", priority=0, folder="other")
    write_task(root, "single", title="S", status="active", priority=4)
    assert listed(root) == ["single"]
    assert claimed_id(root) == "single"
    result = cli(root, "validate", "--json")
    assert "other/twin.md" in result.stdout and "twin.md" in result.stdout and "ids must be unique" in result.stdout


def test_many_processes_building_one_index_at_once_agree(root):
    for n in range(300):
        write_task(root, f"t{n:03d}", title=f"T{n}", status="active", priority=n % 5, folder=f"f{n % 7}")
    procs = [
        subprocess.Popen([*HYPERVISOR, "list", "--tasks", str(root), "--json"], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    outputs = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert all(len(out) == 300 for out in outputs)
    assert TaskStore(str(root)).index.count() == 300


def test_a_long_build_says_how_far_it_is_on_stderr(root, monkeypatch, capsys):
    for n in range(1200):
        write_task(root, f"t{n:04d}", title=f"T{n}", status="active")
    monkeypatch.setattr(Progress, "AFTER", 0.0)
    store = TaskStore(str(root))
    assert store.refresh() == 1200
    err = capsys.readouterr().err
    assert "of 1,200 task files read" in err and "indexed 1,200 task files" in err
    assert store.refresh() == 0  # nothing changed: nothing read, nothing said
    assert capsys.readouterr().err == ""


def test_a_quick_build_says_nothing(root, capsys):
    write_task(root, "a", title="A", status="active")
    TaskStore(str(root)).refresh()
    assert capsys.readouterr().err == ""


def test_the_queue_order_query_uses_its_index(root):
    write_task(root, "a", title="A", status="active")
    store = TaskStore(str(root))
    store.refresh()
    from hypervisor.tasks import index as index_module

    for hinted in (False, True):
        for after in (False, True):
            params = (1.0,) * hinted + (0, 0, "", "a") * after
            sql = index_module.queue_page_sql(hinted, after)
            plan = store.index.db.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
            text = " ".join(str(row) for row in plan)
            assert "files_in_queue_order" in text and "TEMP B-TREE" not in text, (sql, text)


def test_claims_in_one_process_follow_queue_order_over_many_tasks(root):
    for n in range(50):
        write_task(root, f"t{n:02d}", title=f"T{n}", status="active", priority=(49 - n) % 5,
                   created=f"2026-01-{1 + n % 28:02d}")  # fmt: skip
    queue = TaskQueue(TaskStore(str(root)))
    expected = [s["id"] for s in queue.ready()]
    got = [queue.claim_next("w")["id"] for _ in range(50)]
    assert got == expected
    assert sys.modules["hypervisor.tasks.index"]


def lease_hint(store: TaskStore, task_id: str) -> float | None:
    return store.index.db.execute("SELECT lease_until FROM files WHERE id = ?", (task_id,)).fetchone()[0]


def test_a_claim_notes_its_lease_in_the_index_and_the_next_claims_pass_it_by(root):
    for name in ("a", "b"):
        write_task(root, name, title=name.upper(), status="active", priority=1 if name == "a" else 2)
    store = TaskStore(str(root))
    queue = TaskQueue(store)
    first = queue.claim_next("w1")
    assert first["id"] == "a"
    claim = queue.read_claim("a")
    assert lease_hint(store, "a") == claim.lease_expires_at
    assert [s["id"] for s in store.in_queue_order(time.time())] == ["b"]  # the first look: a is in flight
    assert [s["id"] for s in store.in_queue_order()] == ["a", "b"]  # without hints every row is there
    assert queue.claim_next("w2")["id"] == "b"
    assert lease_hint(store, "b") is not None


def test_a_wrong_lease_hint_never_hides_a_claimable_task(root):
    """The hint is only ever a lower bound the first look trusts: a row it wrongly calls held is still claimed,
    by the look that says "nothing to claim" only after seeing every row."""
    write_task(root, "a", title="A", status="active")
    store = TaskStore(str(root))
    store.refresh()
    store.note_lease(store.indexed("a"), time.time() + 3600)
    assert list(store.in_queue_order(time.time())) == []
    assert TaskQueue(store).claim_next("w1")["id"] == "a"


def test_any_change_to_the_file_drops_its_lease_hint(root):
    write_task(root, "a", title="A", status="active")
    store = TaskStore(str(root))
    queue = TaskQueue(store)
    claimed = queue.claim_next("w1")
    assert lease_hint(store, "a") is not None
    queue.release("a", token=claimed["claim_token"])
    assert lease_hint(store, "a") is None
    assert [s["id"] for s in store.in_queue_order(time.time())] == ["a"]


def test_a_live_claim_past_its_hint_is_noted_again(root):
    """A lease renewed where the index is not written (the hooks renew without it) outlives its hint: the first
    look that meets the row again finds the claim live and notes it for FRESH_FOR more."""
    write_task(root, "a", title="A", status="active", priority=1)
    write_task(root, "b", title="B", status="active", priority=2)
    store = TaskStore(str(root))
    queue = TaskQueue(store)
    assert queue.claim_next("w1")["id"] == "a"
    store.note_lease(store.indexed("a"), time.time() - 1)  # as if the lease had been renewed past its hint
    before = time.time()
    assert queue.claim_next("w2")["id"] == "b"
    assert lease_hint(store, "a") >= before + FRESH_FOR - 1


def test_a_claim_writes_the_index_between_pages_of_the_queue_order(root):
    """The queue order is read a page at a time, each read to its end, so a writer between two rows (a claim
    noting its lease while another process writes too) is never refused for reading an old snapshot, which would
    move this process's index into memory."""
    from hypervisor.tasks import index as index_module

    count = index_module.FIRST_ROWS + 2 * index_module.FETCH_ROWS + 3
    for n in range(count):
        write_task(root, f"t{n:03d}", title=f"T{n}", status="active")
    store, other = TaskStore(str(root)), TaskStore(str(root))
    store.refresh()
    seen = []
    for summary in store.in_queue_order(time.time()):
        seen.append(summary["id"])
        other.note_lease(other.indexed(summary["id"]), time.time() + 60)  # another process's commit
        store.note_lease(summary, time.time() + 60)  # and this one's, mid-iteration
    assert seen == [f"t{n:03d}" for n in range(count)]
    assert not store.index.in_memory and not other.index.in_memory


def test_a_first_build_in_bulk_gives_the_index_a_build_row_by_row_gives(root, monkeypatch):
    """A new store's first walk inserts its rows before making the indexes: the same rows, the same indexes, the
    same answers as rows inserted into an indexed table (BULK_ROWS lowered so both paths run on a small store)."""
    from hypervisor.tasks import index as index_module

    for i in range(40):
        write_task(
            root, f"t-{i:02}", folder=f"area-{i % 4}", priority=i % 5, depends_on=[f"t-{i - 1:02}"] if i % 7 else []
        )
    answers = []
    for bulk_rows in (10, 10_000):
        monkeypatch.setattr(index_module, "BULK_ROWS", bulk_rows)
        store = TaskStore(str(root))
        assert store.refresh() == 40
        db = store.index.db
        made = "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        indexes = sorted(row[0].replace("IF NOT EXISTS ", "") for row in db.execute(made))
        order = [summary["id"] for summary in store.in_queue_order()]
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        answers.append((indexes, order, store.index.signatures(), store.select(["inbox"])))
        store.index.close()
        for suffix in ("", "-wal", "-shm"):
            Path(store.index.path + suffix).unlink(missing_ok=True)
    assert answers[0] == answers[1]
    assert len(answers[0][0]) == 4 and len(answers[0][1]) == 40
