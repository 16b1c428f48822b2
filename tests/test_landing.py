"""`hypervisor run --isolation worktree --land`: real git repositories, real processes, a command agent
(land_agent.py) and a real verify script; conflicts, failing verifies, merged-only failures, batches with
bisection, a held checkout, and a kill -9 of the supervisor mid-landing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import HYPERVISOR, run_cli, write_task
from test_supervisor_processes import alive, wait_for

from hypervisor.supervisor.runs import validate_summary
from hypervisor.tasks.taskfile import read_doc

AGENT = f"{sys.executable} {Path(__file__).with_name('land_agent.py')} {{task_id}}"
VERIFY_SCRIPT = '''"""The project's verify: fails on a file holding BROKEN, or on pair-1.txt and pair-2.txt together."""
import glob, os, pathlib, sys, time
found = [str(p) for p in sorted(pathlib.Path(".").glob("*.txt")) if "BROKEN" in p.read_text()]
if found:
    print("verify: BROKEN in", ", ".join(found))
    sys.exit(1)
if os.path.exists("pair-1.txt") and os.path.exists("pair-2.txt"):
    print("verify: pair-1.txt and pair-2.txt cannot be together")
    sys.exit(1)
merged = os.environ.get("HYPERVISOR_VERIFY") == "merged"
marker = os.environ.get("LAND_HANG_MARKER")
if marker and merged and not os.path.exists(marker):
    with open(marker + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)
    time.sleep(600)
person = os.environ.get("LAND_PERSON_COMMITS")  # REPO|MARKER: once, a person commits on the branch meanwhile
if person and merged and not os.path.exists(person.split("|")[1]):
    open(person.split("|")[1], "w").close()
    import subprocess
    subprocess.run(["git", "-C", person.split("|")[0], "-c", "user.name=p", "-c", "user.email=p@p", "commit", "-q",
                    "--allow-empty", "-m", "a person's commit"], check=True)
gate = os.environ.get("LAND_GATE")  # JOURNAL_DIR:N: the gate task's merge waits until N tasks are queued to land
if gate and merged and "gate" in os.environ.get("HYPERVISOR_LAND_TASKS", "").split():
    folder, count = gate.rsplit(":", 1)
    while sum('"queued"' in open(path).read() for path in glob.glob(folder + "/*.json")) < int(count):
        time.sleep(0.05)
print("verify: ok")
'''


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip


def make_project(tmp_path: Path, tasks: dict[str, dict], inside: bool = True, max_attempts: int = 3) -> tuple:
    """A git repository (branch main) with verify.py, shared.txt and .hypervisor.yaml; its task files inside it
    (committed) or beside it. (repo, task root)."""
    repo = tmp_path / "project"
    repo.mkdir()
    root = repo / "tasks" if inside else tmp_path / "tasks"
    root.mkdir()
    (repo / "verify.py").write_text(VERIFY_SCRIPT)
    (repo / "shared.txt").write_text("base\n")
    settings = {"verify": f"{sys.executable} verify.py", "max_attempts": max_attempts}
    if not inside:
        settings["tasks"] = str(root)
    (repo / ".hypervisor.yaml").write_text(yaml.safe_dump(settings))
    for task_id, fields in tasks.items():
        write_task(root, task_id, title=task_id, **fields)
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "base", cwd=repo)
    return repo, root


def land(repo: Path, root: Path, *args: str, env: dict | None = None, code: int | None = 0,
         branch: str | None = None) -> dict:  # fmt: skip
    onto = ("--land", branch) if branch else ("--land",)
    result = run_cli("run", "--tasks", str(root), "--agent", AGENT, "--isolation", "worktree", *onto, "--json",
                     "--timeout", "2m", *args, cwd=repo, env=env)  # fmt: skip
    if code is not None:
        assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    summary = json.loads(result.stdout)
    validate_summary(summary)
    summary["stderr"] = result.stderr
    return summary


def by_id(summary: dict) -> dict:
    return {entry["task_id"]: entry for entry in summary["workers"]}


def task(root: Path, task_id: str):
    return read_doc(str(root / f"{task_id}.md"))


def assert_first_parents_pass(repo: Path, start: str, end: str, tmp_path: Path) -> int:
    """Every commit the branch gained on its first-parent line passes verify when checked out again; how many."""
    commits = git("rev-list", "--first-parent", f"{start}..{end}", cwd=repo).split()
    for index, commit in enumerate(commits):
        place = tmp_path / f"check-{index}"
        git("worktree", "add", "-q", "--detach", str(place), commit, cwd=repo)
        result = subprocess.run([sys.executable, "verify.py"], cwd=place, capture_output=True, text=True)
        assert result.returncode == 0, (commit, result.stdout)
        git("worktree", "remove", "--force", str(place), cwd=repo)
    return len(commits)


def assert_no_scratch(repo: Path) -> None:
    listing = git("worktree", "list", "--porcelain", cwd=repo)
    assert ".land-" not in listing and listing.count("worktree ") == 1, listing


@pytest.mark.parametrize("inside", [True, False], ids=["tasks-in-repo", "tasks-outside"])
def test_several_tasks_land_cleanly(tmp_path, inside):
    tasks = {name: {"edit": f"write {name}.txt work of {name}"} for name in ("one", "two", "three", "four")}
    repo, root = make_project(tmp_path, tasks, inside=inside)
    base = git("rev-parse", "main", cwd=repo)
    summary = land(repo, root, "--workers", "3")
    entries = by_id(summary)
    assert {e["status"] for e in entries.values()} == {"done"}, summary["stderr"]
    tip = git("rev-parse", "main", cwd=repo)
    assert summary["land"]["branch"] == "main" and summary["land"]["from"] == base and summary["land"]["to"] == tip
    assert sorted(summary["land"]["landed"]) == sorted(tasks) and summary["land"]["reopened"] == []
    for name, entry in entries.items():
        assert entry["verified"] is True and entry["landed"] is True and entry["conflict_files"] == []
        assert git("merge-base", "--is-ancestor", entry["commit"], "main", cwd=repo) == ""
        assert git("merge-base", "--is-ancestor", entry["landed_commit"], "main", cwd=repo) == ""
        assert (repo / f"{name}.txt").read_text() == f"work of {name}\n"  # the checkout moved with the branch
        doc = task(root, name)
        assert doc.data["status"] == "done" and doc.data["landed_commit"] == entry["landed_commit"]
        assert f"landed on main at {entry['landed_commit'][:12]}" in doc.body
    assert assert_first_parents_pass(repo, base, tip, tmp_path) == 4  # one verified merge per task
    assert_no_scratch(repo)
    changed = git("status", "--porcelain", cwd=repo).splitlines()
    assert all(line.endswith(".md") for line in changed) and (len(changed) == 4) == inside  # only the task files
    assert not (root / ".hypervisor" / "landing").exists() or not os.listdir(root / ".hypervisor" / "landing")
    for state in ("queued", "verifying", "merging", "landed"):  # the progress lines say where each task is
        assert f"land one {state}: " in summary["stderr"], summary["stderr"]
    shown = run_cli("status", "--tasks", str(root), cwd=repo, check=0).stdout
    assert "one (landing: landed)" in shown and f"land main: {base[:12]} -> {tip[:12]}, landed 4, reopened 0" in shown
    view = json.loads(run_cli("status", "--tasks", str(root), "--json", cwd=repo, check=0).stdout)
    assert view["land"]["landed"] == summary["land"]["landed"] and view["counts"]["landing"] == 0


@pytest.mark.parametrize("inside", [True, False], ids=["tasks-in-repo", "tasks-outside"])
def test_two_tasks_changing_the_same_line_land_one_after_the_other(tmp_path, inside):
    meet = tmp_path / "started"
    tasks = {name: {"edit": f"append shared.txt {name}", "together": f"{meet} 2"} for name in ("left", "right")}
    repo, root = make_project(tmp_path, tasks, inside=inside)
    base = git("rev-parse", "main", cwd=repo)
    summary = land(repo, root, "--workers", "2")
    entries = by_id(summary)
    assert {e["status"] for e in entries.values()} == {"done"}, summary["stderr"]
    first, second = summary["land"]["landed"]
    assert summary["land"]["reopened"] == [second]
    assert entries[first]["attempts"] == 1 and entries[second]["attempts"] == 2
    assert entries[second]["conflict_files"] == ["shared.txt"]
    body = task(root, second).body
    assert "## Landing" in body and "merge conflict with main in shared.txt" in body
    assert (repo / "shared.txt").read_text() == f"base {first} {second}\n"  # redone on the new base
    assert f"land {second} reopened: merge conflict with main in shared.txt" in summary["stderr"]
    assert f"{second}: {second}: start again from main (merging it conflicted in shared.txt)" in summary["stderr"]
    assert task(root, second).data["attempts"] == 2
    assert_first_parents_pass(repo, base, git("rev-parse", "main", cwd=repo), tmp_path)
    # the retry continued its branch (no rewrite): the first attempt's work is still in its history
    subjects = git("log", "--format=%s", entries[second]["branch"], cwd=repo)
    assert subjects.count(f"{second}: work left uncommitted by") == 2 and "start again from main" in subjects
    assert git("merge-base", "--is-ancestor", entries[second]["branch"], "main", cwd=repo) == ""
    assert_no_scratch(repo)


def test_a_change_that_breaks_verify_is_reopened_with_its_output_then_dead_lettered(tmp_path):
    repo, root = make_project(tmp_path, {"bad": {"edit": "write bad.txt BROKEN"}}, max_attempts=2)
    base = git("rev-parse", "main", cwd=repo)
    summary = land(repo, root, code=1)
    entry = by_id(summary)["bad"]
    assert entry["status"] == "dead_letter" and entry["attempts"] == 2 and entry["verified"] is False
    assert entry["landed"] is False and entry["landed_commit"] is None
    doc = task(root, "bad")
    assert doc.data["status"] == "blocked" and doc.data["blocked_reason"] == "max_attempts"
    landing = doc.body.split("\n## Landing\n", 1)[1]
    assert landing.count("verify failed in the task's worktree") == 2
    assert f"command: `{sys.executable} verify.py`" in landing and "exit code: 1" in landing
    assert "verify: BROKEN in bad.txt" in landing  # the output, so that the next attempt reads why
    assert git("rev-parse", "main", cwd=repo) == base and not (repo / "bad.txt").exists()
    assert summary["land"]["landed"] == [] and summary["land"]["reopened"] == ["bad", "bad"]
    logs = sorted(p.name for p in Path(entry["logs"][0]).parent.iterdir())
    assert "bad.1.verify.log" in logs and "bad.2.verify.log" in logs


def test_a_pair_that_passes_alone_but_breaks_once_merged_never_reaches_the_branch(tmp_path):
    meet = tmp_path / "started"
    tasks = {f"pair-{n}": {"edit": f"write pair-{n}.txt half {n}", "together": f"{meet} 2"} for n in (1, 2)}
    repo, root = make_project(tmp_path, tasks, max_attempts=1)
    base = git("rev-parse", "main", cwd=repo)
    summary = land(repo, root, "--workers", "2", code=1)
    entries = by_id(summary)
    assert all(e["verified"] is True for e in entries.values())  # each passed alone in its worktree
    (landed,) = summary["land"]["landed"]
    (caught,) = summary["land"]["reopened"]
    assert entries[landed]["status"] == "done" and entries[caught]["status"] == "dead_letter"
    assert "verify failed on the merge with main" in task(root, caught).body
    assert "pair-1.txt and pair-2.txt cannot be together" in task(root, caught).body
    tip = git("rev-parse", "main", cwd=repo)
    assert git("ls-tree", "--name-only", tip, caught + ".txt", cwd=repo) == ""
    for commit in git("rev-list", f"{base}..{tip}", cwd=repo).split():  # not even off the first-parent line
        assert git("ls-tree", "--name-only", commit, caught + ".txt", cwd=repo) == ""
    assert_first_parents_pass(repo, base, tip, tmp_path)


def test_land_batch_bisects_one_bad_branch_out_of_four(tmp_path):
    tasks = {"gate": {"edit": "write gate.txt first", "priority": 0}}
    for name in ("a", "b", "c"):
        tasks[name] = {"edit": f"write {name}.txt fine"}
    tasks["bad"] = {"edit": "write bad.txt BROKEN", "verify": "true"}  # passes its own check, not the project's
    repo, root = make_project(tmp_path, tasks, max_attempts=1)
    base = git("rev-parse", "main", cwd=repo)
    env = {"LAND_GATE": f"{root / '.hypervisor' / 'landing'}:5"}
    summary = land(repo, root, "--workers", "4", "--land-batch", "4", env=env, code=1)
    entries = by_id(summary)
    assert entries["bad"]["status"] == "dead_letter" and summary["land"]["reopened"] == ["bad"]
    assert sorted(summary["land"]["landed"]) == ["a", "b", "c", "gate"]
    commits = {entries[name]["landed_commit"] for name in ("a", "b", "c")}
    assert len(commits) == 2  # bisected: [x, y] landed together, then z alone (bad was tested on its own)
    assert "verify failed on the merge with main" in task(root, "bad").body
    tip = git("rev-parse", "main", cwd=repo)
    assert_first_parents_pass(repo, base, tip, tmp_path)
    assert not (repo / "bad.txt").exists() and all((repo / f"{n}.txt").exists() for n in "abc")
    assert_no_scratch(repo)


def test_landing_holds_while_the_checkout_has_a_local_change_the_landed_work_touches(tmp_path):
    repo, root = make_project(tmp_path, {"edit-shared": {"edit": "write shared.txt landed"}})
    base = git("rev-parse", "main", cwd=repo)
    (repo / "shared.txt").write_text("a person's unsaved work\n")
    summary = land(repo, root, code=1)
    entry = by_id(summary)["edit-shared"]
    assert entry["status"] == "held" and entry["verified"] is True and entry["landed"] is False
    assert "git refuses to move it" in summary["land"]["held"] and "shared.txt" in summary["land"]["held"]
    assert git("rev-parse", "main", cwd=repo) == base  # the ref did not move without its checkout
    assert (repo / "shared.txt").read_text() == "a person's unsaved work\n"
    assert task(root, "edit-shared").data["status"] == "review"
    (repo / "shared.txt").write_text("base\n")  # resolved: the next run lands it
    again = land(repo, root)
    assert by_id(again)["edit-shared"]["status"] == "done" and again["land"]["landed"] == ["edit-shared"]
    assert (repo / "shared.txt").read_text() == "landed\n"
    assert_first_parents_pass(repo, base, git("rev-parse", "main", cwd=repo), tmp_path)


def test_a_branch_nobody_has_checked_out_is_created_and_landed_on(tmp_path):
    repo, root = make_project(tmp_path, {"x": {"edit": "write x.txt x"}, "y": {"edit": "nothing"}})
    base = git("rev-parse", "main", cwd=repo)
    (repo / "x.txt").write_text("a local file the landed work would overwrite\n")
    summary = land(repo, root, branch="hypervisor/landed")
    assert summary["land"]["branch"] == "hypervisor/landed" and summary["land"]["from"] == base
    entries = by_id(summary)
    assert entries["x"]["status"] == entries["y"]["status"] == "done"
    assert git("show", "hypervisor/landed:x.txt", cwd=repo) == "x" and git("rev-parse", "main", cwd=repo) == base
    # a task that changed nothing lands without a merge of its own: at the commit the branch was at
    assert git("merge-base", "--is-ancestor", entries["y"]["landed_commit"], "hypervisor/landed", cwd=repo) == ""
    assert (repo / "x.txt").read_text() == "a local file the landed work would overwrite\n"


def test_a_verify_that_hangs_is_killed_at_the_timeout_with_its_process_group(tmp_path):
    pids = tmp_path / "verify-pids"
    hang = f"sh -c 'echo $$ >> {pids}; sleep 300' & echo started; wait"
    repo, root = make_project(tmp_path, {"slow": {"edit": "write slow.txt ok", "verify": hang}}, max_attempts=1)
    result = run_cli("run", "--tasks", str(root), "--agent", AGENT, "--isolation", "worktree", "--land", "--json",
                     "--timeout", "6s", cwd=repo)  # fmt: skip
    assert result.returncode == 1, result.stderr
    entry = by_id(json.loads(result.stdout))["slow"]
    assert entry["status"] == "dead_letter" and entry["verified"] is False
    body = task(root, "slow").body
    assert "killed at the 6s timeout" in body and "exit code: -15" in body and "started" in body
    leftover = int(pids.read_text().split()[0])
    wait_for(lambda: not alive(leftover), "the verify's child to be killed with its group", 10)


def test_a_commit_on_the_branch_meanwhile_is_kept_and_the_merge_is_made_again_on_top_of_it(tmp_path):
    repo, root = make_project(tmp_path, {"late": {"edit": "write late.txt late"}})
    base = git("rev-parse", "main", cwd=repo)
    summary = land(repo, root, env={"LAND_PERSON_COMMITS": f"{repo}|{tmp_path / 'committed'}"})
    entry = by_id(summary)["late"]
    assert entry["status"] == "done" and (tmp_path / "committed").exists()
    line = git("rev-list", "--first-parent", f"{base}..main", cwd=repo).split()
    assert len(line) == 2 and line[0] == entry["landed_commit"]  # the landing, on top of the person's commit
    assert git("log", "-1", "--format=%s", line[1], cwd=repo) == "a person's commit"
    assert git("rev-parse", f"{line[0]}^1", cwd=repo) == line[1]  # a fast-forward from it: nothing rewritten
    logs = Path(entry["logs"][0]).parent
    assert (logs / "land-1.log").exists() and (logs / "land-2.log").exists()  # verified again on the new tip
    assert_first_parents_pass(repo, base, line[0], tmp_path)


def test_a_verify_field_that_is_no_command_is_named_with_its_file(tmp_path):
    repo, root = make_project(tmp_path, {"odd": {"edit": "write odd.txt odd", "verify": 5}}, max_attempts=1)
    summary = land(repo, root, code=1)
    assert by_id(summary)["odd"]["status"] == "dead_letter"
    assert f"{root / 'odd.md'}: verify: 5 is not allowed: give one shell command on one line" in task(root, "odd").body
    (repo / ".hypervisor.yaml").write_text("verify: [a, b]\n")
    result = run_cli("run", "--tasks", str(root), "--agent", AGENT, "--isolation", "worktree", "--land", cwd=repo)
    assert result.returncode != 0 and "hypervisor.yaml: verify: ['a', 'b'] is not allowed" in result.stderr


def test_land_needs_worktree_isolation_and_a_branch(tmp_path):
    repo, root = make_project(tmp_path, {"x": {"edit": "nothing"}})
    result = run_cli("run", "--tasks", str(root), "--agent", AGENT, "--land", cwd=repo)
    assert result.returncode == 2 and "--land needs --isolation worktree" in result.stderr
    assert "hypervisor run --isolation worktree --land" in result.stderr
    batch = run_cli("run", "--tasks", str(root), "--agent", AGENT, "--land-batch", "2", cwd=repo)
    assert batch.returncode == 2 and "--land-batch needs --land" in batch.stderr
    git("checkout", "-q", "--detach", cwd=repo)
    detached = run_cli("run", "--tasks", str(root), "--agent", AGENT, "--isolation", "worktree", "--land", cwd=repo)
    assert detached.returncode == 2 and "name the branch to land on: --land BRANCH" in detached.stderr
    assert task(root, "x").data.get("status") is None  # nothing was claimed


def test_kill_9_mid_landing_then_a_new_run_finishes_the_batch(tmp_path):
    tasks = {name: {"edit": f"write {name}.txt {name}"} for name in ("k1", "k2", "k3")}
    repo, root = make_project(tmp_path, tasks)
    base = git("rev-parse", "main", cwd=repo)
    marker = tmp_path / "verify-hangs"
    env = dict(os.environ, LAND_HANG_MARKER=str(marker))
    env.pop("HYPERVISOR_TASKS", None)
    journal = root / ".hypervisor" / "landing"
    proc = subprocess.Popen([*HYPERVISOR, "run", "--tasks", str(root), "--agent", AGENT, "--isolation", "worktree",
                             "--land", "--workers", "3", "--timeout", "10m"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def all_queued() -> bool:
        files = list(journal.glob("*.json")) if journal.exists() else []
        return len(files) == 3 and all('"queued"' in path.read_text() for path in files)

    wait_for(lambda: marker.exists() and all_queued(), "a merged verify that hangs, and every task queued", 120)
    verify_pid = int(marker.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert git("rev-parse", "main", cwd=repo) == base  # nothing unverified moved it
    assert all(task(root, name).data["status"] == "review" for name in tasks)  # none done without landing
    assert ".land-" in git("worktree", "list", "--porcelain", cwd=repo)  # the dead run's scratch is left
    summary = land(repo, root, "--workers", "3")
    assert sorted(summary["land"]["landed"]) == ["k1", "k2", "k3"]
    assert {e["status"] for e in summary["workers"]} == {"done"} and all(e["attempts"] == 0 for e in summary["workers"])
    assert not alive(verify_pid)  # the dead run's verify was killed with its scratch worktree
    assert_no_scratch(repo)
    tip = git("rev-parse", "main", cwd=repo)
    for name in tasks:
        doc = task(root, name)
        assert doc.data["status"] == "done"
        assert git("merge-base", "--is-ancestor", doc.data["landed_commit"], tip, cwd=repo) == ""
    assert assert_first_parents_pass(repo, base, tip, tmp_path) == 3


def test_a_completion_under_lands_waits_in_review_until_landed_or_turned_back(tmp_path, backend):
    from conftest import make_queue

    from hypervisor.core.config import Config
    from hypervisor.core.errors import ClaimRefused

    root = tmp_path / "tasks"
    for task_id in ("lands", "back", "dead"):
        write_task(root, task_id, title=task_id, attempts=1 if task_id == "dead" else 0)
    queue = make_queue(root, backend, Config(max_attempts=2))
    for task_id in ("lands", "back", "dead"):
        claim = queue.claim_next("w1", task_id=task_id, lands="main")
        result = queue.complete(task_id, token=claim["claim_token"], summary="did it")
        assert result["status"] == "review" and result["lands"] == "main"
        assert queue.read_claim(task_id) is None  # the claim ended; nobody can claim a task in review
        with pytest.raises(ClaimRefused, match="review"):
            queue.claim_next("w2", task_id=task_id)
    assert "completed, lands on main once verified" in task(root, "lands").body
    queue.landed("lands", "main", "ab" * 20, "lander")
    doc = task(root, "lands")
    assert doc.data["status"] == "done" and doc.data["landed_commit"] == "ab" * 20 and "landed on main" in doc.body
    with pytest.raises(ClaimRefused, match="no longer review"):
        queue.landed("lands", "main", "ab" * 20, "lander")
    back = queue.turn_back("back", "verify failed", "  - exit code: 1", "lander")
    assert back == {"id": "back", "status": "active", "attempts": 1, "dead_letter": False}
    assert "## Landing" in task(root, "back").body and task(root, "back").data.get("assignee") is None
    assert queue.claim_next("w3", task_id="back")["attempts"] == 2  # the next attempt reads why, counted
    dead = queue.turn_back("dead", "merge conflict with main in a.txt", "  - files: a.txt", "lander")
    assert dead["dead_letter"] is True and task(root, "dead").data["blocked_reason"] == "max_attempts"
    kinds = [event["event"] for event in queue.events()]
    assert kinds.count("completed") == 3 and "landed" in kinds and "reopened" in kinds and "dead_letter" in kinds
