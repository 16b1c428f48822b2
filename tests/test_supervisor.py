"""The supervisor's worker lifecycle with faked processes (pytest-subprocess): spawn, outcome, timeout and kill,
crash, retry, dead letter, preflight skips, and the run folder. Real processes are in test_supervisor_processes.py."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import jsonschema
import pytest
from conftest import write_task

from hypervisor.core import rules
from hypervisor.core.config import Config
from hypervisor.core.errors import UsageError
from hypervisor.supervisor.loop import RunOptions, Supervisor, exit_code
from hypervisor.supervisor.runs import load_run, summary_schema
from hypervisor.tasks.store import TaskStore
from hypervisor.tasks.taskfile import read_doc

AGENT = "/bin/true"  # a path that passes the agent check (it exists, executable); pytest-subprocess answers for it


def make_queue(root: Path, max_attempts: int = 3):
    from hypervisor.claims.queue import TaskQueue

    return TaskQueue(TaskStore(str(root)), Config(max_attempts=max_attempts))


def supervise(queue, **options) -> Supervisor:
    options.setdefault("agent", AGENT + " {task_id} {worker} {attempt}")
    options.setdefault("workers", 2)
    return Supervisor(queue, RunOptions(**options))


def claim_env(process) -> tuple[str, str]:
    env = process.kwargs["env"]
    return env["HYPERVISOR_TASK_ID"], env["HYPERVISOR_CLAIM_TOKEN"]


def completes(queue, summary: str = "did it"):
    def callback(process):
        task_id, token = claim_env(process)
        queue.complete(task_id, token=token, summary=f"{summary} {task_id}")

    return callback


def status_of(root: Path, task_id: str) -> dict:
    return read_doc(str(root / f"{task_id}.md")).data


def test_each_ready_task_gets_one_worker_with_the_claim_in_its_environment(fp, root, tmp_path):
    for name in ("a", "b", "c"):
        write_task(root, name, title=f"Task {name}")
    queue = make_queue(root)
    fp.register([AGENT, fp.any()], callback=completes(queue), occurrences=3)
    supervisor = supervise(queue, project_dir=str(tmp_path))
    summary = supervisor.run()

    assert [e["task_id"] for e in summary["workers"]] == ["a", "b", "c"]
    assert {e["status"] for e in summary["workers"]} == {"done"}
    assert summary["workers"][0]["outcome"] == "did it a"
    calls = [call for call in fp.calls]
    assert len(calls) == 3
    for process_args in calls:
        assert process_args[0] == AGENT
    for task_id in ("a", "b", "c"):
        assert status_of(root, task_id)["status"] == "done"
    assert exit_code(summary) == 0
    jsonschema.Draft202012Validator(summary_schema()).validate(summary)


def test_worker_environment_and_process_options(fp, root, tmp_path):
    write_task(root, "a")
    queue = make_queue(root)
    seen = {}

    def callback(process):
        seen.update(process.kwargs, args=process.args)
        completes(queue)(process)

    fp.register([AGENT, "a", str(root / "a.md"), fp.any()], callback=callback)
    supervise(queue, project_dir=str(tmp_path), agent=AGENT + " {task_id} {task_file} {token} {run_id}").run()
    env = seen["env"]
    assert env["HYPERVISOR_WORKER"] == "1"
    assert env["HYPERVISOR_TASK_ID"] == "a"
    assert len(env["HYPERVISOR_CLAIM_TOKEN"]) == 32
    assert env["HYPERVISOR_TASKS"] == str(root)
    assert seen["args"][3] == env["HYPERVISOR_CLAIM_TOKEN"] == env["HYPERVISOR_CLAIM"]  # placeholders filled
    assert seen["args"][4] == env["HYPERVISOR_RUN_ID"]
    assert seen["start_new_session"] is True  # its own process group, so a kill reaches everything it started
    assert seen["cwd"] == str(tmp_path)
    assert seen["stdin"] is not None


def test_a_crash_releases_the_task_and_the_retry_finishes_it(fp, root, tmp_path):
    write_task(root, "flaky")
    queue = make_queue(root)
    fp.register([AGENT, "flaky", fp.any(), "1"], returncode=1, stdout="boom")
    fp.register([AGENT, "flaky", fp.any(), "2"], callback=completes(queue))
    summary = supervise(queue, project_dir=str(tmp_path)).run()

    [entry] = summary["workers"]
    assert entry["status"] == "done" and entry["attempts"] == 2
    assert entry["exit_codes"] == [1, 0]
    assert len(entry["logs"]) == 2 and "boom" in Path(entry["logs"][0]).read_text()
    assert status_of(root, "flaky")["attempts"] == 2
    events = [json.loads(line) for line in (root / ".hypervisor" / "events.jsonl").read_text().splitlines()]
    released = [e for e in events if e["event"] == "released"]
    assert released and released[0]["reason"] == "exited with code 1 without finishing the task"


def test_a_task_that_keeps_failing_is_dead_lettered_at_max_attempts(fp, root, tmp_path):
    write_task(root, "doomed")
    write_task(root, "fine")
    queue = make_queue(root, max_attempts=2)
    fp.register([AGENT, "doomed", fp.any()], returncode=3, occurrences=5)
    fp.register([AGENT, "fine", fp.any()], callback=completes(queue))
    summary = supervise(queue, project_dir=str(tmp_path)).run()

    by_id = {e["task_id"]: e for e in summary["workers"]}
    assert by_id["doomed"]["status"] == "dead_letter"
    assert by_id["doomed"]["attempts"] == 2
    assert by_id["doomed"]["reason"].startswith("max_attempts: 2 attempts, the last exited with code 3")
    data = status_of(root, "doomed")
    assert data["status"] == "blocked" and data["blocked_reason"] == rules.DEAD_LETTER_REASON
    assert "max_attempts" in (root / "doomed.md").read_text().split("## Worker log")[1]
    assert by_id["fine"]["status"] == "done"
    assert exit_code(summary) == 1
    assert queue.read_claim("doomed") is None


def hangs_until_signalled(ignore_term: bool = False):
    """A fake worker that runs until it gets a signal it does not ignore."""

    def callback(process):
        process.stop_event.wait(30)

    def on_signal(process, sig):
        process.signals_seen = getattr(process, "signals_seen", []) + [sig]
        if sig == signal.SIGTERM and ignore_term:
            return
        process.returncode = -sig
        process.stop_event.set()

    return callback, on_signal


@pytest.fixture
def fake_hang(fp, monkeypatch):
    """Give every FakePopen a stop event, so a hanging callback can be ended by a signal."""
    from pytest_subprocess.fake_popen import FakePopen

    original = FakePopen.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.stop_event = threading.Event()

    monkeypatch.setattr(FakePopen, "__init__", init)
    return fp


@pytest.mark.parametrize("ignore_term", [False, True])
def test_a_worker_past_its_timeout_is_terminated_then_killed(fake_hang, root, tmp_path, ignore_term):
    fp = fake_hang
    write_task(root, "stuck")
    queue = make_queue(root, max_attempts=1)
    callback, on_signal = hangs_until_signalled(ignore_term)
    fp.register([AGENT, "stuck", fp.any()], callback=callback, signal_callback=on_signal)
    fp.keep_last_process(True)
    supervisor = supervise(queue, project_dir=str(tmp_path), timeout=0.3, kill_grace=0.3)
    summary = supervisor.run()

    [entry] = summary["workers"]
    assert entry["status"] == "dead_letter"
    assert "killed at the 0s timeout" in entry["reason"]
    expected = [signal.SIGTERM, signal.SIGKILL] if ignore_term else [signal.SIGTERM]
    assert entry["exit_codes"] == [-expected[-1]]
    assert entry["duration_s"] >= 0.3 + (0.3 if ignore_term else 0)


def test_a_worker_that_blocks_its_task_is_reported_blocked_with_its_reason(fp, root, tmp_path):
    write_task(root, "needs-key")
    queue = make_queue(root)

    def callback(process):
        task_id, token = claim_env(process)
        queue.block(task_id, token=token, reason="no API key for the vendor")

    fp.register([AGENT, fp.any()], callback=callback)
    summary = supervise(queue, project_dir=str(tmp_path)).run()
    [entry] = summary["workers"]
    assert entry["status"] == "blocked" and entry["reason"] == "no API key for the vendor"
    assert exit_code(summary) == 0


def test_exec_failure_at_start(root, tmp_path):
    """An agent that passes the check but cannot be executed (an executable file with no #! line) releases its
    claim, uncounted."""
    write_task(root, "a")
    agent = tmp_path / "no-interpreter"
    agent.write_text("echo this file names no interpreter\n")
    agent.chmod(0o755)
    queue = make_queue(root)
    supervisor = supervise(queue, project_dir=str(tmp_path), agent=f"{agent} {{task_id}}")
    summary = supervisor.run()
    [entry] = summary["workers"]
    assert entry["status"] == "released"
    assert "could not start the worker" in entry["reason"] and str(agent) in entry["reason"]
    assert entry["attempts"] == 0 and entry["workers_started"] == 1
    data = status_of(root, "a")
    assert data["status"] == "inbox" and data.get("attempts", 0) == 0
    assert queue.read_claim("a") is None


@pytest.mark.parametrize(
    ("make", "template", "needles"),
    [
        (None, "./does-not-exist.sh {task_id}", ["'./does-not-exist.sh'", "does not exist", "does-not-exist.sh)"]),
        (None, "/nonexistent/agent-binary {task_id}", ["'/nonexistent/agent-binary' does not exist"]),
        ("plain", "./plain.sh {task_id}", ["is not executable", "chmod +x", "--agent 'sh ./plain.sh {task_id}'"]),
        ("folder", "./folder {task_id}", ["is a folder"]),
        ("script", "./script.sh {task_id} {bogus} {Attempt}",
         ["unknown placeholder(s) {Attempt}, {bogus}", "allowed: {task_id} {token} {task_file} {worker} {attempt} "
          "{run_id} {workdir}"]),
    ],
)  # fmt: skip
def test_an_agent_that_cannot_start_is_refused_before_a_claim(root, tmp_path, make, template, needles):
    write_task(root, "a")
    if make == "plain":
        (tmp_path / "plain.sh").write_text("#!/bin/sh\n")
    elif make == "folder":
        (tmp_path / "folder").mkdir()
    (tmp_path / "script.sh").write_text("#!/bin/sh\n")
    (tmp_path / "script.sh").chmod(0o755)
    queue = make_queue(root)
    with pytest.raises(UsageError) as refused:
        supervise(queue, project_dir=str(tmp_path), agent=template).run()
    for needle in needles:
        assert needle in str(refused.value), str(refused.value)
    assert queue.read_claim("a") is None and "status" not in status_of(root, "a")


def test_literal_braces_are_not_placeholders(root, tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    supervise(make_queue(root), project_dir=str(tmp_path), agent=f"{script} '{{\"a\": 1}}' {{ }} {{task_id}}").prepare()


def test_preflight_skips_are_reported_and_a_dependency_finished_in_the_run_unblocks(fp, root, tmp_path):
    write_task(root, "base", priority=1)
    write_task(root, "after-base", depends_on=["base"])
    write_task(root, "never", depends_on=["missing-task"])
    write_task(root, "old", status="done")
    write_task(root, "dropped", status="cancelled")
    write_task(root, "held")
    write_task(root, "review-me", status="review")
    queue = make_queue(root)
    other = queue.claim_next("someone-else", task_id="held")
    assert other["claim_token"]
    fp.register([AGENT, fp.any()], callback=completes(queue), occurrences=5)
    summary = supervise(queue, project_dir=str(tmp_path), workers=1).run()

    assert [e["task_id"] for e in summary["workers"]] == ["base", "after-base"]
    skipped = summary["skipped_preflight"]
    assert skipped["done"] == ["old"] and skipped["cancelled"] == ["dropped"]
    assert skipped["claimed"] == ["held"] and skipped["blocked_deps"] == ["never"]
    assert skipped["other"] == ["review-me"]
    assert status_of(root, "held")["assignee"] == "someone-else"


def test_batch_by_ids_and_project(fp, root, tmp_path):
    write_task(root, "a", project="web")
    write_task(root, "b", project="web")
    write_task(root, "c", project="data")
    queue = make_queue(root)
    fp.register([AGENT, fp.any()], callback=completes(queue), occurrences=5)
    assert [e["task_id"] for e in supervise(queue, project_dir=str(tmp_path), ids=["b"]).run()["workers"]] == ["b"]
    assert [e["task_id"] for e in supervise(queue, project_dir=str(tmp_path), project="web").run()["workers"]] == ["a"]


def test_an_expired_claim_is_reclaimed_and_reported(fp, root, tmp_path):
    write_task(root, "orphan")
    queue = make_queue(root)
    queue.claim_next("dead-worker", task_id="orphan", lease_seconds=0.01)
    time.sleep(0.05)
    fp.register([AGENT, fp.any()], callback=completes(queue))
    summary = supervise(queue, project_dir=str(tmp_path)).run()
    assert summary["reclaimed"] == [{"task_id": "orphan", "from": "dead-worker"}]
    assert summary["workers"][0]["status"] == "done"


def test_drain_takes_no_new_tasks(fp, root, tmp_path):
    for name in ("a", "b", "c"):
        write_task(root, name)
    queue = make_queue(root)
    holder = {}

    def first(process):
        holder["supervisor"].drain()  # as the first Ctrl-C does, while this worker runs
        completes(queue)(process)

    fp.register([AGENT, fp.any()], callback=first, occurrences=3)
    supervisor = holder["supervisor"] = supervise(queue, project_dir=str(tmp_path), workers=1)
    summary = supervisor.run()
    assert summary["status"] == "drained"
    assert [e["task_id"] for e in summary["workers"]] == ["a"]
    assert "status" not in status_of(root, "b")  # never claimed: the file is as it was written


def test_run_state_on_disk_and_status_view(fp, root, tmp_path):
    write_task(root, "a")
    queue = make_queue(root)
    seen = {}

    def callback(process):
        deadline = time.monotonic() + 60  # the fake starts at once; the supervisor records the worker just after
        seen["live"] = load_run(str(root / ".hypervisor"))
        while not seen["live"]["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
            seen["live"] = load_run(str(root / ".hypervisor"))
        completes(queue)(process)

    fp.register([AGENT, fp.any()], callback=callback)
    supervisor = supervise(queue, project_dir=str(tmp_path))
    summary = supervisor.run()
    live = seen["live"]
    assert live["status"] == "running" and live["run_id"] == supervisor.run_id
    assert [r["task_id"] for r in live["running"]] == ["a"]
    final = load_run(str(root / ".hypervisor"), supervisor.run_id[:15])
    assert final["status"] == "finished" and final["summary"] == summary
    assert Path(supervisor.folder.summary_path).is_file()
    with pytest.raises(UsageError, match="unknown"):
        load_run(str(root / ".hypervisor"), "nope")


def test_a_dead_supervisor_is_reported_dead(root):
    from hypervisor.supervisor.runs import RunFolder

    folder = RunFolder(str(root / ".hypervisor"), "20260101-000000-abcd")
    folder.create()
    import socket

    folder.write_state({"run_id": folder.run_id, "status": "running", "pid": 2**22 + 12345,
                        "host": socket.gethostname(), "started_at": "2026-01-01T00:00:00Z"})  # fmt: skip
    assert load_run(str(root / ".hypervisor"))["status"] == "dead"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": 0}, "--workers 0 is not allowed: use 1 to 32"),
        ({"workers": 33}, "--workers 33 is not allowed"),
        ({"isolation": "vm"}, "--isolation 'vm' is not allowed: use none or worktree"),
        ({"timeout": 0}, "--timeout 0 is not allowed"),
    ],
)
def test_bad_options_are_refused_with_what_is_allowed(options, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        RunOptions(**options)


def test_summary_schema_refuses_a_bad_summary():
    from hypervisor.core.errors import HypervisorError
    from hypervisor.supervisor.runs import validate_summary

    with pytest.raises(HypervisorError, match="workers/0"):
        validate_summary({"run_id": "r", "started_at": "2026-01-01T00:00:00Z", "runtime_seconds": 1, "total_tokens": 0,
                          "workers": [{"task_id": "a", "worker": "w1", "status": "done", "commit": None, "tokens": 0,
                                       "duration_s": 1, "attempts": 1, "log": "x"}],  # done without its outcome
                          "skipped_preflight": {"done": [], "cancelled": [], "claimed": [], "blocked_deps": []},
                          "reclaimed": []})  # fmt: skip
