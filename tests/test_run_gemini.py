"""`hypervisor run --agent gemini` end to end: the real, pinned Gemini CLI (the extension linked) as two parallel
workers on four tasks, against the scripted fake Gemini API with one lane per task (matched by the "TASK-ID: <id>"
line the supervisor puts in each worker's prompt). Fails, never skips, without the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from conftest import HYPERVISOR, REPO, write_task
from fake_gemini import FakeGemini, Lane, call, first_user_text, function_responses, response_text, text
from gemini_cli import hermetic_gemini_env, link_extension, prepare_home

CLAIM = "mcp_task_manager_claim_next_task"
COMPLETE = "mcp_task_manager_complete_task"
BLOCK = "mcp_task_manager_block_task"


def _hypervisor() -> list[str]:
    script = Path(sys.executable).parent / "hypervisor"
    return [str(script)] if script.exists() else list(HYPERVISOR)


def _claim(request: dict) -> dict:
    for response in function_responses(request):
        if response["name"] == CLAIM:
            output = response_text(response)
            return json.loads(output[output.index("{") : output.rindex("}") + 1])
    raise AssertionError("no claim result in the conversation")


def _claim_call(task_id: str):
    """claim_next_task as the worker the prompt names (the supervisor hands its claim over)."""

    def step(request: dict):
        worker = re.search(r"^Worker name: (\S+)$", first_user_text(request), re.M)
        return call(CLAIM, {"caller": worker.group(1) if worker else "gemini", "task_id": task_id})

    return step


def _finish(tool: str, task_id: str, **args):
    return lambda request: call(tool, {"id": task_id, "claim_token": _claim(request)["claim_token"], **args})


def _succeeds(task_id: str, path: str) -> list:
    return [
        _claim_call(task_id),
        call("write_file", {"file_path": path, "content": f"{task_id}\n"}),
        _finish(COMPLETE, task_id, summary=f"Wrote {path}"),
        text(f"TASK COMPLETE: {task_id}\nsummary: wrote {path}\ncommit: none"),
    ]


def _blocks(task_id: str) -> list:
    return [
        _claim_call(task_id),
        _finish(BLOCK, task_id, reason="needs the warehouse credentials"),
        text(f"TASK BLOCKED: {task_id}\nreason: needs the warehouse credentials"),
    ]


def _strays(task_id: str, path: str) -> list:
    """Tries to write outside its scope, then blocks with the gate's refusal as the reason."""

    def block(request: dict):
        refusal = response_text(function_responses(request)[-1])
        return _finish(BLOCK, task_id, reason="the edit was refused: " + refusal)(request)

    return [
        _claim_call(task_id),
        call("write_file", {"file_path": path, "content": "stray\n"}),
        block,
        text(f"TASK BLOCKED: {task_id}\nreason: {path} is outside my scope"),
    ]


def _life(log: Path) -> tuple[float, float]:
    """(spawned, finished) of a worker, in seconds: its log's header (whole seconds) and its `result` event."""
    text = log.read_text(errors="replace")
    started = re.search(r"^# hypervisor run .* started (\S+Z) in ", text, re.M).group(1)
    results = [json.loads(line) for line in text.splitlines() if line.startswith('{"type":"result"')]
    return _seconds(started), _seconds(results[-1]["timestamp"])


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _events(root: Path) -> list[dict]:
    lines = (root / ".hypervisor" / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_hypervisor_run_drives_two_gemini_workers_over_four_tasks(gemini, tmp_path):
    project = tmp_path / "project"
    root = project / "tasks"
    for task_id, scope in (("ok-a", "src/a/**"), ("ok-b", "src/b/**"), ("needs-creds", "src/c/**"),
                           ("strays", "src/d/**")):  # fmt: skip
        write_task(root, task_id, status="active", title=f"Task {task_id}", scope=[scope])
    (project / ".hypervisor.yaml").write_text("tasks: tasks\n")
    home = prepare_home(tmp_path / "home")
    link_extension(REPO / "gemini", home, gemini=gemini)
    lanes = {
        "ok-a": _succeeds("ok-a", "src/a/a.txt"),
        "ok-b": _succeeds("ok-b", "src/b/b.txt"),
        "needs-creds": _blocks("needs-creds"),
        "strays": _strays("strays", "docs/stray.md"),
    }
    script = [Lane(task_id, steps, match=f"TASK-ID: {task_id}\n") for task_id, steps in lanes.items()]

    with FakeGemini(script) as model:
        env = hermetic_gemini_env(model.url, home)
        env = {key: value for key, value in env.items() if not key.startswith("HYPERVISOR_")}  # not a worker itself
        env["HYPERVISOR_GEMINI"] = gemini
        args = [*_hypervisor(), "run", "--agent", "gemini", "--workers", "2", "--timeout", "90s",
                "--tasks", str(root), "--json"]  # fmt: skip
        proc = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=240,
                              stdin=subprocess.DEVNULL)  # fmt: skip
        played = {task_id: model.played(task_id) for task_id in lanes}
        last_turns = {task_id: model.lane_requests(task_id)[-1] for task_id in lanes if model.played(task_id)}
        usage = model.usage_totals()["totalTokenCount"]
        problems = list(model.problems)

    runs = root / ".hypervisor" / "runs"
    logs = "".join(f"\n--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(runs.rglob("*.log")))
    where = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}{logs}"
    assert proc.returncode == 0, where
    summary = json.loads(proc.stdout)
    assert not problems, (problems, where)
    assert played == {task_id: len(steps) for task_id, steps in lanes.items()}, (played, where)

    # The summary: each task once, in the state its script implies.
    entries = {entry["task_id"]: entry for entry in summary["workers"]}
    assert len(summary["workers"]) == 4 and len(entries) == 4, summary["workers"]
    # Each worker got the supervisor's claim from claim_next_task (not a claim of its own).
    claims = {task_id: _claim(request) for task_id, request in last_turns.items()}
    assert {task_id: claim["id"] for task_id, claim in claims.items()} == {task_id: task_id for task_id in lanes}
    assert all(claim["claim_token"] and claim["attempts"] == 1 for claim in claims.values()), claims
    assert {k: e["status"] for k, e in entries.items()} == {
        "ok-a": "done", "ok-b": "done", "needs-creds": "blocked", "strays": "blocked"}, summary  # fmt: skip
    assert all(entry["attempts"] == 1 and entry["exit_codes"] == [0] for entry in entries.values()), summary
    assert entries["ok-a"]["outcome"] == "Wrote src/a/a.txt"
    assert entries["needs-creds"]["reason"] == "needs the warehouse credentials"
    assert "docs/stray.md is outside the scope of task strays (src/d/**)" in entries["strays"]["reason"], summary
    assert summary["status"] == "finished" and summary["counts"]["done"] == 2 and summary["counts"]["blocked"] == 2
    assert len({entry["worker"] for entry in entries.values()}) >= 2, summary  # two slots were used
    assert (runs / summary["run_id"] / "summary.json").exists()

    # Tokens: from each worker's stream-json `result` event, which sums the usage of every reply the model sent.
    assert all(entry["tokens"] > 0 for entry in entries.values()), summary
    assert summary["total_tokens"] == sum(entry["tokens"] for entry in entries.values()) > 0
    assert summary["total_tokens"] == usage, (summary["total_tokens"], usage)  # all the model replies' usage

    # The task files and the files the workers wrote (the gate refused the out-of-scope one).
    for task_id, status in (("ok-a", "done"), ("ok-b", "done"), ("needs-creds", "blocked"), ("strays", "blocked")):
        front = (root / f"{task_id}.md").read_text().split("---")[1]
        assert re.search(rf"^status: {status}$", front, re.M), (task_id, front)
    assert (project / "src/a/a.txt").read_text() == "ok-a\n"
    assert (project / "src/b/b.txt").read_text() == "ok-b\n"
    assert not (project / "docs").exists()
    assert not (root / ".hypervisor" / "claims").exists() or not any((root / ".hypervisor" / "claims").iterdir())

    # Each task was claimed once, and two workers were busy at the same time: in the store's journal (two claims
    # before the first outcome) and in the workers' lives (spawned, per its log's header, to its `result` event).
    events = [e for e in _events(root) if e.get("task") in lanes]
    claimed = [e["task"] for e in events if e.get("event") == "claimed"]
    assert sorted(claimed) == sorted(lanes), events
    order = [(e["task"], e["event"]) for e in events if e.get("event") in ("claimed", "completed", "blocked")]
    first_end = next(i for i, (_, kind) in enumerate(order) if kind != "claimed")
    assert first_end >= 2, order
    lives = {task_id: _life(Path(entry["log"])) for task_id, entry in entries.items()}
    overlaps = [min(lives[a][1], lives[b][1]) - max(lives[a][0], lives[b][0]) for a in lives for b in lives if a < b]
    assert max(overlaps) > 1.0, lives  # more than the header's one-second resolution
