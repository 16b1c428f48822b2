"""The plugin installed the way a user installs it works in the very first session.

A fresh clone of this repository (no .venv), `claude plugin marketplace add <clone>` and `claude plugin install
hypervisor@hypervisor` into a fresh HOME, then real `claude -p` sessions driven by the scripted fake model. The
first session is the cold start: the MCP server's dependencies are not installed anywhere, so scripts/launch.py
makes a venv in CLAUDE_PLUGIN_DATA, and the task tools must still be in the very first model request, with no
"still connecting" notice. The second session is the warm path with the CPU busy. The third test is the server
in a folder that has no task root. These fail, never skip, without the CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from claude_cli import hermetic_env, run_claude
from conftest import write_task
from fake_model import FakeModel, Lane, last_tool_result, system_text, text, tool_names, tool_results, tool_use
from install_env import NO_MODEL, PLUGIN_KEY, install_plugin, make_clone, tree
from mcp import Client
from mcp.client.stdio import StdioServerParameters

PREFIX = "mcp__plugin_hypervisor_task_manager__"
TASK_TOOLS = ("list_tasks", "get_task", "claim_next_task", "update_task", "complete_task", "block_task",
              "release_task", "get_index_stats", "create_task")  # fmt: skip
MARKER = "TASK-ID: t1\n"
SESSION_TIMEOUT = 600  # an upper bound: the cold start installs the dependencies while the session runs
DURATIONS: dict[str, float] = {}


@pytest.fixture(autouse=True)
def no_hypervisor_env(monkeypatch):
    """Nothing from the parent's environment steers the plugin (e.g. HYPERVISOR_PYTHON pointing at a ready venv,
    which would hide the first start's dependency install): a user's session has no HYPERVISOR_* variables."""
    for key in [key for key in os.environ if key.startswith("HYPERVISOR_")]:
        monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def installed(claude, tmp_path_factory):
    """One fresh HOME with the plugin installed from one fresh clone, shared by this module's tests so the
    dependency install of the first start is paid once."""
    base = tmp_path_factory.mktemp("install")
    clone = make_clone(base / "clone")
    assert (clone / ".claude-plugin" / "marketplace.json").is_file() and not (clone / ".venv").exists()
    plugin = install_plugin(claude, base / "home", clone)
    print(f"\n[install] {plugin.describe()}\n[install] cache {plugin.cache}: {tree(plugin.cache, 1)}")
    return plugin


def test_install_writes_settings_and_copies_the_plugin_without_a_venv(installed):
    settings = installed.settings
    assert settings["enabledPlugins"] == {PLUGIN_KEY: True}, settings
    assert settings["extraKnownMarketplaces"]["hypervisor"]["source"] == {
        "source": "directory", "path": str(installed.clone)}, settings  # fmt: skip
    (record,) = installed.installed_plugins["plugins"][PLUGIN_KEY]
    assert record["installPath"] == str(installed.cache) and record["version"] == "0.1.0", record
    head = subprocess.run(["git", "-C", str(installed.clone), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert record.get("gitCommitSha") == head.stdout.strip(), record

    cache = installed.cache
    assert cache.name == "0.1.0"
    needed = (".claude-plugin/plugin.json", ".claude-plugin/marketplace.json", ".mcp.json", "hooks/hooks.json",
              "hooks/tool_hook.py", "agents/worker.md", "scripts/launch.py", "requirements.lock",
              "src/hypervisor/frontends/mcp_server.py")  # fmt: skip
    for name in needed:
        assert (cache / name).is_file(), (name, tree(cache, 1))
    assert not (cache / ".venv").exists() and not (cache / ".git").exists(), tree(cache, 1)
    assert not list(cache.rglob("site-packages")), "the copy carries no installed dependencies"
    assert not installed.data.exists() or not list(installed.data.glob("*/bin/python")), "nothing installed yet"


def first_request_problems(request: dict, tools: tuple[str, ...] = TASK_TOOLS) -> list[str]:
    """What is wrong with a first request of a session: task tools missing, or a 'still connecting' notice."""
    problems = [f"missing {PREFIX}{name}" for name in tools if PREFIX + name not in tool_names(request)]
    seen = (system_text(request) + json.dumps(request.get("messages"))).lower()
    if "still connecting" in seen:
        at = seen.index("still connecting")
        problems.append(f"still-connecting notice: ...{seen[max(0, at - 300) : at + 300]}...")
    return problems


def cached_failure(plugin) -> str:
    """Claude Code's cache of servers that failed to connect (it skips them for the next 15 minutes), if it names
    the task server."""
    cache = plugin.claude_dir / "mcp-needs-auth-cache.json"
    content = cache.read_text() if cache.exists() else ""
    return content if "task_manager" in content else ""


def claim_token(request: dict) -> str:
    for result in tool_results(request):
        if '"claim_token"' in result["text"]:
            return json.loads(result["text"])["claim_token"]
    raise AssertionError(f"no claim result in the conversation: {tool_results(request)}")


def timeline(model: FakeModel, started: float) -> str:
    """When each model request arrived, in seconds after `started` (time.time()): for the printed report."""
    return " ".join(f"{r.lane or 'side'}#{r.turn}@{r.time - started:.1f}s" for r in model.records
                    if r.path == "/v1/messages")  # fmt: skip


def make_project(folder, scope=None):
    tasks = folder / "tasks"
    fields = {"status": "active", "title": "Write module a"}
    if scope:
        fields["scope"] = scope
    write_task(tasks, "t1", **fields)
    (folder / ".hypervisor.yaml").write_text("tasks: tasks\n")
    return tasks


def worker_mcp_tools(cache) -> tuple[str, ...]:
    """The task tools the installed agents/worker.md lets a worker use (its `tools:` line)."""
    front = (cache / "agents" / "worker.md").read_text().split("---")[1]
    line = next(row for row in front.splitlines() if row.startswith("tools:"))
    return tuple(sorted(set(re.findall(re.escape(PREFIX) + r"(\w+)", line))))


def test_first_session_after_install_a_worker_claims_and_completes(installed, claude, tmp_path):
    project = tmp_path / "project"
    tasks = make_project(project, scope=["src/**"])
    target = project / "src" / "a.py"
    worker = [
        tool_use("Write", {"file_path": str(target), "content": "A = 0\n"}),  # before claiming: refused
        tool_use(PREFIX + "claim_next_task", {"caller": "w1", "task_id": "t1"}),
        tool_use("Write", {"file_path": str(target), "content": "A = 1\n"}),  # under the claim: goes through
        lambda request: tool_use(
            PREFIX + "complete_task", {"id": "t1", "claim_token": claim_token(request), "summary": "Wrote module a"}
        ),  # fmt: skip
        lambda request: text("TASK COMPLETE: t1 " + last_tool_result(request)),
    ]
    main = [
        tool_use(
            "Agent",
            {
                "description": "worker t1",
                "prompt": MARKER + "Do task t1 as worker w1.",
                "subagent_type": "hypervisor:worker",
                "run_in_background": False,
            },
        ),  # fmt: skip
        text("MAIN-DONE"),
    ]
    with FakeModel([Lane("main", main), Lane("worker", worker, match=MARKER)]) as model:
        started, wall = time.monotonic(), time.time()
        result = run_claude("Work the queue with one worker.", plugin_dir=None, home=installed.home, cwd=project,
                            model_url=model.url, claude=claude, timeout=SESSION_TIMEOUT)  # fmt: skip
        DURATIONS["cold"] = time.monotonic() - started
        main_requests, worker_requests = model.lane_requests("main"), model.lane_requests("worker")
    print(f"\n[cold] first session after install: {DURATIONS['cold']:.1f} s; requests: {timeline(model, wall)}; "
          f"data dir: {tree(installed.data, 1)}")  # fmt: skip
    assert not result.is_error, result.describe()
    assert main_requests and worker_requests, (len(main_requests), len(worker_requests), result.describe())
    assert not first_request_problems(main_requests[0]), first_request_problems(main_requests[0])
    allowed = worker_mcp_tools(installed.cache)
    assert {"claim_next_task", "complete_task"} <= set(allowed), allowed
    assert not first_request_problems(worker_requests[0], allowed), first_request_problems(worker_requests[0], allowed)
    assert model.played("worker") == len(worker) and model.played("main") == len(main), model.problems
    assert not model.problems, model.problems

    before_claim, claimed, edit, completed = tool_results(worker_requests[-1])
    assert before_claim["is_error"] and "holds no claim" in before_claim["text"], before_claim
    assert not claimed["is_error"] and json.loads(claimed["text"])["id"] == "t1", claimed
    assert not edit["is_error"], edit
    assert not completed["is_error"] and json.loads(completed["text"])["status"] == "done", completed
    denied = [d["tool_name"] for d in result.json.get("permission_denials", [])]
    assert denied == ["Write"], result.json.get("permission_denials")
    assert target.read_text() == "A = 1\n" and sorted(p.name for p in target.parent.iterdir()) == ["a.py"]

    body = (tasks / "t1.md").read_text()
    assert re.search(r"(?m)^status: done$", body), body
    log = body.split("## Worker log", 1)[1]
    assert "w1" in log and "Wrote module a" in log and "src/a.py" in log, log

    assert list(installed.data.glob("*/bin/python")), f"no venv in CLAUDE_PLUGIN_DATA: {tree(installed.data, 2)}"
    assert not cached_failure(installed), cached_failure(installed)


def test_warm_session_under_cpu_load_has_the_tools_from_the_start(installed, claude, tmp_path):
    project = tmp_path / "project"
    tasks = make_project(project)
    main = [
        tool_use(PREFIX + "claim_next_task", {"caller": "main", "task_id": "t1"}),
        lambda request: tool_use(
            PREFIX + "complete_task", {"id": "t1", "claim_token": claim_token(request), "summary": "Done under load"}
        ),  # fmt: skip
        lambda request: text("TASK COMPLETE: t1 " + last_tool_result(request)),
    ]
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        with FakeModel(main) as model:
            started, wall = time.monotonic(), time.time()
            result = run_claude("Do task t1 from the queue.", plugin_dir=None, home=installed.home, cwd=project,
                                model_url=model.url, claude=claude, timeout=SESSION_TIMEOUT)  # fmt: skip
            DURATIONS["warm_under_load"] = time.monotonic() - started
            requests = model.lane_requests("main")
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()
    print(f"\n[warm] session under CPU load: {DURATIONS['warm_under_load']:.1f} s "
          f"(cold: {DURATIONS.get('cold', float('nan')):.1f} s); requests: {timeline(model, wall)}")  # fmt: skip
    assert not result.is_error, result.describe()
    assert requests, result.describe()
    assert not first_request_problems(requests[0]), first_request_problems(requests[0])
    assert model.played("main") == len(main) and not model.problems, model.problems
    claimed, completed = tool_results(requests[-1])
    assert not claimed["is_error"] and json.loads(claimed["text"])["id"] == "t1", claimed
    assert not completed["is_error"] and json.loads(completed["text"])["status"] == "done", completed
    body = (tasks / "t1.md").read_text()
    assert re.search(r"(?m)^status: done$", body) and "Done under load" in body.split("## Worker log", 1)[1]
    assert not cached_failure(installed), cached_failure(installed)


async def list_then_call(params: StdioServerParameters):
    async with Client(params, read_timeout_seconds=SESSION_TIMEOUT) as client:
        tools = [tool.name for tool in (await client.list_tools()).tools]
        result = await client.call_tool("list_tasks", {})
    return tools, result


def server_command(plugin_root) -> tuple[str, list[str]]:
    """The task_manager server's command line as the plugin's .mcp.json gives it to Claude Code, expanded."""
    entry = json.loads((plugin_root / ".mcp.json").read_text())["mcpServers"]["task_manager"]
    expand = lambda arg: arg.replace("${CLAUDE_PLUGIN_ROOT}", str(plugin_root))  # noqa: E731
    return expand(entry["command"]), [expand(arg) for arg in entry.get("args", [])]


def test_server_in_a_folder_with_no_task_root_says_how_to_make_one(installed, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = hermetic_env(NO_MODEL, str(installed.home))
    env.update(
        CLAUDE_PLUGIN_ROOT=str(installed.clone), CLAUDE_PLUGIN_DATA=str(installed.data), CLAUDE_PROJECT_DIR=str(empty)
    )  # as Claude Code starts it; the data dir holds the first start's venv
    command, args = server_command(installed.clone)
    assert command == "python3" and args[-2:] == [str(installed.clone / "scripts" / "launch.py"), "mcp"], args
    params = StdioServerParameters(command=shutil.which(command, path=env["PATH"]) or command, args=args, env=env,
                                   cwd=str(empty))  # fmt: skip
    tools, result = asyncio.run(list_then_call(params))
    assert sorted(tools) == sorted(TASK_TOOLS), tools
    message = "\n".join(getattr(block, "text", "") for block in result.content)
    assert result.is_error, message
    for hint in ("hypervisor init", ".hypervisor.yaml", "tasks:", "HYPERVISOR_TASKS"):
        assert hint in message, (hint, message)
    assert os.listdir(empty) == [], f"the server made files in a folder with no task root: {os.listdir(empty)}"
