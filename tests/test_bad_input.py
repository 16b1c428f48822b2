"""Bad input, as real bad files and real bad ids: every one named clearly, nothing outside the root touched."""

from __future__ import annotations

import json
import os

import pytest
from conftest import run_cli, write_task

from hypervisor.claims.queue import TaskQueue
from hypervisor.core.errors import InvalidTaskId
from hypervisor.core.rules import check_task_id
from hypervisor.tasks.store import TaskStore

BAD_IDS = ["../escape", "a/b", "..", "a..b", ".hidden", "a\x00b", "", "-dash", "x" * 129, "a\nb"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_are_refused_before_any_path_is_built(bad, root):
    with pytest.raises(InvalidTaskId, match="is not allowed"):
        check_task_id(bad)
    queue = TaskQueue(TaskStore(str(root)))
    with pytest.raises(InvalidTaskId):
        queue.claim_next("w", task_id=bad)
    with pytest.raises(InvalidTaskId):
        queue.complete(bad, caller="w", summary="x")


@pytest.mark.parametrize("bad", ["../escape", "a/b", "..", ".hidden", "../../etc/passwd"])
def test_cli_refuses_bad_ids_with_exit_1_and_writes_nothing_outside(bad, tmp_path):
    root = tmp_path / "tasks"
    write_task(root, "ok")
    (tmp_path / "escape.md").write_text("---\nstatus: active\n---\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (["show", bad], ["claim", bad, "--caller", "w"], ["complete", bad, "--caller", "w", "--summary", "s"]):
        result = run_cli(*args, "--tasks", str(root), check=1)
        assert "is not allowed" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "escape.md").read_text() == "---\nstatus: active\n---\n"


@pytest.mark.parametrize("bad_id", ["../outside", "a/b", ".dot", "x..y"])
def test_frontmatter_ids_that_could_name_paths_are_invalid(bad_id, root):
    write_task(root, "file", id=bad_id)
    store = TaskStore(str(root))
    valid, invalid = store.summaries()
    assert valid == [] and len(invalid) == 1
    assert invalid[0]["field"] == "id" and repr(bad_id) in invalid[0]["error"]


def make_bad_store(root):
    write_task(root, "good", status="active", priority=1)
    (root / "broken-yaml.md").write_text("---\ntitle: x\ntags: [a, b\n---\nbody\n")
    (root / "list-frontmatter.md").write_text("---\n- a\n- b\n---\nbody\n")
    (root / "binary.md").write_bytes(b"---\ntitle: x\n---\n\x00\x01\x02\xff")
    (root / "latin1.md").write_bytes("---\ntitle: caf\xe9\n---\n".encode("latin-1"))
    with open(root / "huge.md", "wb") as handle:
        handle.write(b"---\ntitle: huge\n---\n")
        handle.truncate(50 * 1024 * 1024)
    outside = root.parent / "outside.md"
    outside.write_text("---\ntitle: secret\nstatus: active\n---\nsecret body\n")
    os.symlink(outside, root / "link-out.md")
    write_task(root, "unknown-status", status="doing")
    write_task(root, "bad-priority", priority="high")
    write_task(root, "dup", folder="one", status="active")
    write_task(root, "dup", folder="two", status="active")
    write_task(root, "unclosed-check", status="active")
    (root / "unclosed.md").write_text("---\ntitle: never closed\n")
    (root / "notes.txt").write_text("not a task")
    return outside


EXPECTED = {
    "broken-yaml.md": ["frontmatter is not valid YAML at line 4"],
    "list-frontmatter.md": ["YAML list, not a mapping"],
    "binary.md": ["binary"],
    "latin1.md": ["not UTF-8"],
    "huge.md": ["52,428,800 bytes", "at most"],
    "link-out.md": ["symlink points outside the task root"],
    "unknown-status.md": ["status:", "'doing' is not one of inbox, active"],
    "bad-priority.md": ["priority:", "'high' is not allowed", "0 (highest) to 4"],
    "one/dup.md": ["'dup' is also the id of two/dup.md"],
    "two/dup.md": ["'dup' is also the id of one/dup.md"],
    "unclosed.md": ["frontmatter is not closed"],
}


def test_validate_names_every_bad_file_field_and_value(root):
    outside = make_bad_store(root)
    result = run_cli("validate", "--tasks", str(root), "--json", check=1)
    report = json.loads(result.stdout)
    by_path = {}
    for problem in report["problems"]:
        by_path.setdefault(problem["path"], []).append(problem["message"])
    assert set(by_path) == set(EXPECTED), by_path
    for rel, needles in EXPECTED.items():
        message = " ".join(by_path[rel])
        assert str(root / rel) in message or rel in message
        for needle in needles:
            assert needle in message, (rel, needle, message)
    text = run_cli("validate", "--tasks", str(root), check=1)
    assert "13 task files checked, 11 invalid" in text.stderr
    assert "secret body" not in result.stdout + text.stdout
    assert outside.read_text().startswith("---\ntitle: secret")


def test_bad_files_are_left_out_of_the_queue_and_never_rewritten(root):
    make_bad_store(root)
    snapshot = {p: p.read_bytes() for p in root.rglob("*.md") if p.stat().st_size < 1024 * 1024 and not p.is_symlink()}
    listed = run_cli("list", "--tasks", str(root), "--json", check=0)
    assert {t["id"] for t in json.loads(listed.stdout)} == {"good", "unclosed-check"}
    assert "11 task file(s) are invalid" in listed.stderr
    claimed = run_cli("claim", "--caller", "w", "--tasks", str(root), "--json", check=0)
    assert json.loads(claimed.stdout)["id"] == "good"
    run_cli("claim", "--caller", "w", "--tasks", str(root), check=0)
    none_left = run_cli("claim", "--caller", "w", "--tasks", str(root), check=3)
    assert "nothing to claim" in none_left.stderr
    for path, content in snapshot.items():
        if path.stem not in ("good", "unclosed-check"):
            assert path.read_bytes() == content, path
    refused = run_cli("claim", "dup", "--caller", "w", "--tasks", str(root), check=1)
    assert "also the id of" in refused.stderr
    refused = run_cli("claim", "link-out", "--caller", "w", "--tasks", str(root), check=1)
    assert "symlink points outside" in refused.stderr


def test_a_symlink_inside_the_root_is_an_alias_and_skipped(root):
    target = write_task(root, "real", folder="sub", status="active")
    os.symlink(target, root / "alias.md")
    valid, invalid = TaskStore(str(root)).summaries()
    assert [t["id"] for t in valid] == ["real"] and invalid == []


def test_missing_task_root_is_a_clear_refusal(tmp_path):
    result = run_cli("list", "--tasks", str(tmp_path / "nope"), check=2)
    assert "does not exist" in result.stderr and "--tasks DIR" in result.stderr


def test_bad_config_is_named(tmp_path):
    (tmp_path / ".hypervisor.yaml").write_text("gate: sometimes\n")
    result = run_cli("list", cwd=tmp_path, check=2)
    assert ".hypervisor.yaml: gate: 'sometimes' is not one of off, warn, block, all" in result.stderr
    (tmp_path / ".hypervisor.yaml").write_text("taks: x\n")
    result = run_cli("list", cwd=tmp_path, check=2)
    assert "unknown key 'taks'" in result.stderr


def test_bad_lease_is_a_usage_error(root):
    write_task(root, "a")
    result = run_cli("claim", "--caller", "w", "--lease", "soon", "--tasks", str(root), check=2)
    assert "--lease 'soon' is not a duration" in result.stderr
