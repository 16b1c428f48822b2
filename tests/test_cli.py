"""The `hypervisor` CLI as a user runs it: real processes, JSON output, exit codes 0/1/2/3, task-root resolution."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import REPO, run_cli, write_task

from hypervisor.tasks import taskfile


@pytest.fixture
def examples(tmp_path):
    root = tmp_path / "tasks"
    shutil.copytree(REPO / "examples" / "tasks", root)
    return root


def cli_json(*args, check=0, **kwargs):
    return json.loads(run_cli(*args, "--json", check=check, **kwargs).stdout)


def test_worker_loop_end_to_end(root):
    write_task(root, "a", status="active", priority=0, title="First")
    write_task(root, "b", status="active", depends_on=["a"])
    claim = cli_json("claim", "--caller", "w1", "--lease", "10m", "--tasks", str(root))
    assert claim["id"] == "a" and claim["status"] == "in_progress" and claim["claim_token"]
    assert claim["lease_expires_at"].endswith("Z")
    token = claim["claim_token"]
    run_cli("claim", "--caller", "w2", "--tasks", str(root), check=3)
    renewed = cli_json("renew", "a", "--token", token, "--lease", "1h", "--tasks", str(root))
    assert renewed["lease_expires_at"] > claim["lease_expires_at"]
    wrong = run_cli("complete", "a", "--token", "nope", "--summary", "x", "--tasks", str(root), check=1)
    assert "does not match the live claim" in wrong.stderr
    missing = run_cli("complete", "a", "--token", token, "--tasks", str(root), check=2)
    assert "--summary" in missing.stderr
    done = cli_json("complete", "a", "--token", token, "--summary", "shipped", "--commit", "deadbeef",
                    "--tasks", str(root))  # fmt: skip
    assert done == {"id": "a", "status": "done", "attempts": 1, "commit": "deadbeef"}
    shown = cli_json("show", "a", "--tasks", str(root))
    assert shown["status"] == "done" and "shipped" in shown["body"] and shown["claim"] is None
    nxt = cli_json("claim", "--caller", "w2", "--tasks", str(root))
    assert nxt["id"] == "b"
    blocked = cli_json("block", "b", "--caller", "w2", "--reason", "needs creds", "--tasks", str(root))
    assert blocked["status"] == "blocked"
    stats = cli_json("stats", "--tasks", str(root))
    assert stats["by_status"]["done"] == 1 and stats["by_status"]["blocked"] == 1 and stats["claimed"] == 0


def test_release_puts_the_task_back(root):
    path = write_task(root, "a", status="active")
    claim = cli_json("claim", "a", "--caller", "w1", "--tasks", str(root))
    released = cli_json("release", "a", "--token", claim["claim_token"], "--reason", "later", "--tasks", str(root))
    assert released["status"] == "active"
    assert taskfile.read_doc(str(path)).data["status"] == "active"


def test_list_filters_and_orders(examples):
    everything = cli_json("list", "--tasks", str(examples))
    assert len(everything) == 45
    keys = [(t["priority"], t["created"] is None, t["created"] or "", t["id"]) for t in everything]
    assert keys == sorted(keys)
    active = cli_json("list", "--status", "active", "--tasks", str(examples))
    assert active and {t["status"] for t in active} == {"active"}
    web = cli_json("list", "--project", "website", "--limit", "3", "--tasks", str(examples))
    assert len(web) == 3 and {t["project"] for t in web} == {"website"}
    ready = cli_json("list", "--ready", "--tasks", str(examples))
    assert len(ready) == 28 and {t["status"] for t in ready} <= {"inbox", "active"}
    bad = run_cli("list", "--status", "doing", "--tasks", str(examples), check=2)
    assert "'doing' is not one of" in bad.stderr


def test_preflight_and_stats_on_the_examples(examples):
    pre = cli_json("preflight", "--tasks", str(examples))
    assert len(pre["ready"]) == 28
    assert len(pre["skipped"]["done"]) == 6 and len(pre["skipped"]["cancelled"]) == 2
    waiting = {item["id"]: item["waiting_on"] for item in pre["skipped"]["blocked_deps"]}
    assert waiting["web-remove-legacy-session-cookie"] == ["legacy-auth-removal (missing)"]
    some = cli_json("preflight", "--ids", "approve-q4-budget,web-choose-cms-vendor", "--ids", "nope",
                    "--tasks", str(examples))  # fmt: skip
    assert some["ready"] == ["approve-q4-budget"] and some["missing"] == ["nope"]
    stats = cli_json("stats", "--by-project", "--tasks", str(examples))
    assert stats["total"] == 45 and stats["invalid"] == 4
    assert set(stats["by_project"]) == {"website", "data-pipeline", "mobile-app", "(none)"}


def test_triage_closes_assigns_and_links(examples):
    result = cli_json("triage", "--tasks", str(examples))
    actions = {item["id"]: item for item in result["tasks"]}
    assert result["counts"]["closed"] == 2 and result["counts"]["triaged"] == 26
    assert actions["web-fix-footer-typo"]["action"] == "closed"
    closed = taskfile.read_doc(str(next(examples.rglob("web-fix-footer-typo.md"))))
    assert closed.data["status"] == "done" and "closed by triage" in closed.body
    triaged = [p for p in examples.rglob("*.md") if actions.get(p.stem, {}).get("action") == "triaged"]
    assert len(triaged) == 26
    for path in triaged:
        doc = taskfile.read_doc(str(path))
        data = doc.data
        assert data["status"] == "active" and data["assignee"]
        assert data["triage"] in ("judgment", "automatable")
        assert data.get("attempts", 0) == 0, "triage must not use up an attempt"
        if data.get("project"):
            assert f"[[{data['project'].strip('[]')}]]" in doc.body
    again = cli_json("triage", "--tasks", str(examples))
    assert again["counts"]["closed"] == 0
    assert run_cli("validate", "--tasks", str(examples), check=1).stdout.count("\n") == 4


def test_triage_dry_run_writes_nothing(examples):
    before = {p: p.read_bytes() for p in examples.rglob("*.md")}
    result = cli_json("triage", "--dry-run", "--tasks", str(examples))
    assert any(item["action"] == "would close" for item in result["tasks"])
    assert {p: p.read_bytes() for p in examples.rglob("*.md")} == before


def test_task_root_resolution_order(tmp_path):
    for name in ("from-flag", "from-env", "from-config", "tasks"):
        write_task(tmp_path / name, name)
    (tmp_path / ".hypervisor.yaml").write_text("tasks: from-config\n")
    sub = tmp_path / "deep" / "er"
    sub.mkdir(parents=True)

    def ids(*args, env=None):
        return [t["id"] for t in cli_json("list", *args, cwd=sub, env=env)]

    assert ids("--tasks", str(tmp_path / "from-flag"), env={"HYPERVISOR_TASKS": str(tmp_path / "from-env")}) == [
        "from-flag"
    ]
    assert ids(env={"HYPERVISOR_TASKS": str(tmp_path / "from-env")}) == ["from-env"]
    assert ids() == ["from-config"]
    (tmp_path / ".hypervisor.yaml").unlink()
    assert [t["id"] for t in cli_json("list", cwd=tmp_path)] == ["tasks"]


def test_state_folder_ignores_itself_in_git(root):
    write_task(root, "a")
    run_cli("claim", "--caller", "w", "--tasks", str(root), check=0)
    assert (root / ".hypervisor" / ".gitignore").read_text().splitlines()[-1] == "*"


def test_help_teaches(root):
    out = run_cli("--help", check=0).stdout
    for command in ("list", "show", "claim", "renew", "release", "complete", "block", "stats", "preflight",
                    "validate", "triage"):  # fmt: skip
        assert command in out
    claim_help = run_cli("claim", "--help", check=0).stdout
    assert "Exit 3 when nothing is ready" in claim_help and "--tasks DIR" in claim_help
    assert run_cli("nonsense", check=2).returncode == 2
