"""Optimistic task-file writes: a person's save that lands while hypervisor rewrites a file is never thrown away."""

from __future__ import annotations

import os

import pytest
from conftest import write_task

from hypervisor.core import fsutil
from hypervisor.core.errors import ConcurrentEdit, TaskFileError
from hypervisor.tasks import store as store_module
from hypervisor.tasks.store import TaskStore
from hypervisor.tasks.taskfile import MAX_TASK_BYTES


@pytest.fixture(params=["exchange", "check-then-replace"])
def swap_mode(request, monkeypatch):
    """Both ways of replacing: renameat2 RENAME_EXCHANGE, and the check just before os.replace where it is missing."""
    if request.param == "check-then-replace":
        monkeypatch.setattr(fsutil, "_renameat2", False)
    else:
        assert fsutil._exchange is not None
    return request.param


def save_in_place(path, text):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def save_by_rename(path, text):
    tmp = f"{path}.editor-tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def read_state(path):
    with open(path, "rb") as handle:
        raw = handle.read()
    return raw, os.stat(path).st_ino


def test_replace_if_unchanged_replaces_an_unchanged_file_and_keeps_its_mode(tmp_path, swap_mode):
    path = tmp_path / "a.md"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    raw, ino = read_state(path)
    assert fsutil.replace_if_unchanged(str(path), b"new\n", raw, ino)
    assert path.read_text() == "new\n" and (os.stat(path).st_mode & 0o777) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.md"]  # no temporary file left


@pytest.mark.parametrize("save", [save_in_place, save_by_rename])
def test_replace_if_unchanged_keeps_a_save_made_since_the_read(tmp_path, swap_mode, save):
    path = tmp_path / "a.md"
    path.write_text("old\n")
    raw, ino = read_state(path)
    save(str(path), "old\n")  # same bytes, same size: only the inode (rename) or nothing but time (in place)
    save(str(path), "the person's\n")
    assert not fsutil.replace_if_unchanged(str(path), b"hypervisor's\n", raw, ino)
    assert path.read_text() == "the person's\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md"]


def test_replace_if_unchanged_sees_a_same_size_in_place_save(tmp_path, swap_mode):
    path = tmp_path / "a.md"
    path.write_text("aaaa\n")
    raw, ino = read_state(path)
    save_in_place(str(path), "bbbb\n")  # same inode, same size, possibly the same mtime tick: the bytes tell
    assert not fsutil.replace_if_unchanged(str(path), b"cccc\n", raw, ino)
    assert path.read_text() == "bbbb\n"


@pytest.mark.parametrize("save", [save_in_place, save_by_rename])
def test_rewrite_reapplies_its_change_over_a_save_that_landed_meanwhile(root, swap_mode, save):
    path = write_task(root, "a", body="Body.\n", status="active", custom="kept")
    store = TaskStore(str(root))
    calls = []

    def change(summary, doc):
        calls.append(summary["status"])
        if len(calls) == 1:  # the person saves between hypervisor's read and its replace
            save(str(path), path.read_text() + "a line the person added\n")
        doc.set("status", "in_progress")
        return "result"

    assert store.rewrite(store.find("a"), change) == "result"
    text = path.read_text()
    assert len(calls) == 2
    assert "status: in_progress" in text and "a line the person added\n" in text and "custom: kept" in text


def test_rewrite_gives_up_on_a_file_that_changes_every_time(root, swap_mode):
    path = write_task(root, "a", status="active")
    store = TaskStore(str(root))
    calls = []

    def change(summary, doc):
        calls.append(1)
        save_in_place(str(path), path.read_text() + f"save {len(calls)}\n")
        doc.set("priority", 1)

    with pytest.raises(ConcurrentEdit, match="changed 8 times"):
        store.rewrite(store.find("a"), change)
    assert len(calls) == store_module.WRITE_TRIES
    text = path.read_text()
    assert "priority" not in text and text.endswith(f"save {store_module.WRITE_TRIES}\n")


def test_rewrite_refuses_a_change_that_would_make_the_file_unreadable(root):
    path = write_task(root, "a", status="active")
    before = path.read_bytes()
    store = TaskStore(str(root))

    def grow(summary, doc):
        doc.append_to_section("## Notes", "x" * MAX_TASK_BYTES)

    with pytest.raises(TaskFileError, match="would make the file"):
        store.rewrite(store.find("a"), grow)
    assert path.read_bytes() == before
    assert store.by_id()["a"]["status"] == "active"
