"""bulkread.read_rows: the same index rows, in the same order, serially and across forked workers."""

from __future__ import annotations

import os

import pytest

from hypervisor.tasks import bulkread
from hypervisor.tasks.index import make_row
from hypervisor.tasks.store import TaskStore


@pytest.fixture
def store(root, monkeypatch) -> TaskStore:
    """A store of valid tasks with every kind of unusable file among them; any count of files goes parallel."""
    monkeypatch.setattr(bulkread, "PARALLEL_MIN", 1)
    monkeypatch.setattr(bulkread, "CHUNK", 7)
    for i in range(60):
        folder = root / f"area-{i % 3}"
        folder.mkdir(exist_ok=True)
        tags = "[a, b]" if i % 2 else "\n- x\n- 'y'"
        (folder / f"t-{i}.md").write_text(f"---\ntitle: Task {i}\npriority: {i % 5}\ntags: {tags}\n---\nbody\n")
    (root / "bad-yaml.md").write_text("---\ntags: [a, b\n---\n")
    (root / "bad-status.md").write_text("---\nstatus: doing\n---\n")
    (root / "exotic.md").write_text("---\ntitle: &a x\nalias: *a\nok: yes\n---\n")
    (root / "list.md").write_text("---\n- a\n---\n")
    (root / "binary.md").write_bytes(b"---\x00\n")
    (root / "dup.md").write_text("---\nid: t-1\n---\n")
    (root / "dir.md").mkdir()
    (root / "dir.md" / "inner.md").write_text("---\ntitle: inner\n---\n")
    outside = root.parent / "outside.md"
    outside.write_text("---\ntitle: outside\n---\n")
    os.symlink(outside, root / "link-out.md")
    os.symlink(root / "list.md", root / "alias.md")
    return TaskStore(str(root))


def serial(store: TaskStore, items) -> list:
    """The index rows of `items` made one by one here, from TaskStore's own single-file reader."""
    return [make_row(rel, (st.st_mtime_ns, st.st_size, st.st_ino), store._read_summary(rel, st, is_link))
            for rel, st, is_link in items]  # fmt: skip


def test_parallel_equals_serial_in_order(store, monkeypatch, capsys):
    forked = []
    parallel = bulkread._parallel
    monkeypatch.setattr(bulkread, "_parallel", lambda *args: forked.append(args[3]) or parallel(*args))
    items = list(store._walk())
    expected = serial(store, items)
    invalid = sum(row[4] for row in expected)  # the `invalid` column
    assert len(items) == 68 and invalid == 5  # a duplicate id shows only in TaskStore.summaries
    assert bulkread.read_rows(store.root, items, workers=2) == expected
    assert bulkread.read_rows(store.root, items, workers=4) == expected
    assert bulkread.read_rows(store.root, items, workers=1) == expected
    assert bulkread.read_rows(store.root, [], workers=2) == []
    assert forked == [2, 4] and capsys.readouterr().err == ""


def test_reads_alone_if_no_child_can_start(store, monkeypatch, capsys):
    def refuse():
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refuse)
    items = list(store._walk())
    assert bulkread.read_rows(store.root, items, workers=3) == serial(store, items)
    assert "reading task files in fewer processes" in capsys.readouterr().err


def die(writer) -> None:
    os._exit(3)


def test_falls_back_to_one_process_if_a_worker_dies(store, monkeypatch, capsys):
    monkeypatch.setattr(bulkread, "_child", die)
    items = list(store._walk())
    assert bulkread.read_rows(store.root, items, workers=3) == serial(store, items)
    assert capsys.readouterr().err.count("a process reading task files ended early (exit 3)") == 2


@pytest.mark.parametrize(("load", "expected"), [(0.0, 4), (0.9, 4), (1.2, 3), (3.5, 1), (40.0, 1)])
def test_children_only_for_cpus_other_work_leaves_idle(monkeypatch, load, expected):
    monkeypatch.setattr(bulkread, "cpus", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert bulkread.idle_cpus() == expected
