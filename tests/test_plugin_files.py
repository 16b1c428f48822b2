"""Every prompt, skill, agent and command names MCP tools the server really exposes, and every manifest path exists."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import REPO
from mcp import Client

from hypervisor.claims.queue import TaskQueue
from hypervisor.frontends.mcp_server import SERVER_NAME, build_server
from hypervisor.tasks.store import TaskStore

CLAUDE_PREFIX = f"mcp__plugin_hypervisor_{SERVER_NAME}__"
GEMINI_PREFIX = f"mcp_{SERVER_NAME}_"
GEMINI_ROOT = REPO / "gemini"  # its own root: Gemini reads <root>/hooks/hooks.json, which at REPO is Claude's
TEXT_FILES = sorted(
    [
        *REPO.glob("prompts/*.md"),
        *REPO.glob("skills/*/SKILL.md"),
        *REPO.glob("agents/*.md"),
        *GEMINI_ROOT.glob("commands/**/*.toml"),
        GEMINI_ROOT / "GEMINI.md",
    ]  # fmt: skip
)


@pytest.fixture(scope="module")
def exposed(tmp_path_factory) -> set[str]:
    """Tool names as the server lists them to a real MCP client."""
    root = tmp_path_factory.mktemp("tasks")

    async def names() -> set[str]:
        async with Client(build_server(TaskQueue(TaskStore(str(root))))) as client:
            return {tool.name for tool in (await client.list_tools()).tools}

    return asyncio.run(names())


def test_the_files_exist():
    names = {p.relative_to(REPO).as_posix() for p in TEXT_FILES}
    assert {"prompts/worker.md", "prompts/gemini-task-worker.md", "skills/hypervisor/SKILL.md",
            "skills/pull/SKILL.md", "agents/worker.md", "gemini/commands/hypervisor/pull.toml"} <= names  # fmt: skip


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_tool_name_is_one_the_server_exposes(path, exposed):
    text = path.read_text(encoding="utf-8")
    claude = set(re.findall(r"mcp__plugin_[A-Za-z0-9_-]+?__(\w+)", text))
    claude_prefixes = set(re.findall(r"(mcp__plugin_[A-Za-z0-9_-]+?__)\w+", text))
    gemini = set(re.findall(rf"\b{GEMINI_PREFIX}(\w+)", text))
    assert claude_prefixes <= {CLAUDE_PREFIX}, f"{path}: wrong plugin/server prefix {claude_prefixes}"
    assert claude <= exposed, f"{path}: {sorted(claude - exposed)} are not tools of {SERVER_NAME}"
    assert gemini <= exposed, f"{path}: {sorted(gemini - exposed)} are not tools of {SERVER_NAME}"
    other = set(re.findall(r"\bmcp__(?!plugin_)\w+", text))
    assert not other, f"{path}: {other} is spelled neither as Claude Code nor as Gemini names MCP tools"
    is_gemini = "gemini" in path.name or path.suffix == ".toml" or path.name == "GEMINI.md"
    assert gemini if is_gemini else claude, f"{path} names no task_manager tool in its host's spelling"
    if is_gemini:
        assert not claude, f"{path} is read by Gemini but uses Claude Code tool names {claude}"
    else:
        assert not gemini, f"{path} is read by Claude Code but uses Gemini tool names {gemini}"


def frontmatter(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n"), f"{path} has no frontmatter"
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_skill_and_agent_frontmatter(exposed):
    for path in REPO.glob("skills/*/SKILL.md"):
        meta = frontmatter(path)
        assert meta["name"] == path.parent.name and len(meta["description"]) > 40
    triggers = frontmatter(REPO / "skills/hypervisor/SKILL.md")["description"]
    for phrase in ("batch tasks", "parallel processing", "process queue in parallel"):
        assert phrase in triggers
    agent = frontmatter(REPO / "agents/worker.md")
    assert agent["name"] == "worker"
    tools = [t.strip() for t in agent["tools"].split(",")]
    mcp_tools = {t.removeprefix(CLAUDE_PREFIX) for t in tools if t.startswith("mcp__")}
    assert mcp_tools <= exposed and {"claim_next_task", "complete_task", "block_task"} <= mcp_tools
    assert "hypervisor:worker" in (REPO / "skills/hypervisor/SKILL.md").read_text()


def test_worker_agent_carries_the_worker_prompt_verbatim():
    body = (REPO / "agents/worker.md").read_text(encoding="utf-8").split("---\n", 2)[2]
    assert body == (REPO / "prompts/worker.md").read_text(encoding="utf-8")


def test_prompts_fix_the_output_format_and_the_rules():
    for name in ("worker.md", "gemini-task-worker.md"):
        text = (REPO / "prompts" / name).read_text()
        for needle in ("TASK COMPLETE: <task-id>", "TASK BLOCKED:", "Fail fast", "git push", "claim lost"):
            assert needle in text, (name, needle)


def _expand(value: str) -> str:
    return (value.replace("${CLAUDE_PLUGIN_ROOT}", str(REPO)).replace("${extensionPath}", str(GEMINI_ROOT))
            .replace("${/}", "/"))  # fmt: skip


def test_every_path_a_manifest_names_exists():
    plugin = json.loads((REPO / ".claude-plugin/plugin.json").read_text())
    assert plugin["name"] == "hypervisor" and plugin["version"] and plugin["description"]
    assert isinstance(plugin["author"], dict) and plugin["author"]["name"]
    for manifest in (".mcp.json", "gemini/gemini-extension.json"):
        data = json.loads((REPO / manifest).read_text())
        server = data["mcpServers"][SERVER_NAME]
        paths = [_expand(arg) for arg in server["args"] if "/" in arg]
        assert paths, manifest
        for path in paths:
            assert (REPO / path).exists(), f"{manifest} names {path}, which does not exist"
    gemini = json.loads((GEMINI_ROOT / "gemini-extension.json").read_text())
    assert re.fullmatch(r"[a-zA-Z0-9-]+", gemini["name"]) and gemini["version"] == plugin["version"]
    assert (GEMINI_ROOT / gemini["contextFileName"]).exists()
    for path in TEXT_FILES:
        for ref in re.findall(r"\$\{CLAUDE_PLUGIN_ROOT\}/([\w./-]+)", path.read_text()):
            assert (REPO / ref).exists(), f"{path} names {ref}, which does not exist"
    for toml_path in GEMINI_ROOT.glob("commands/**/*.toml"):
        assert tomllib.loads(toml_path.read_text())["prompt"].strip()


def _hook_commands(path: Path) -> list[tuple[str, str, dict]]:
    config = json.loads(path.read_text())
    return [(event, group.get("matcher", ""), hook) for event, groups in config["hooks"].items()
            for group in groups for hook in group["hooks"]]  # fmt: skip


def test_each_cli_has_its_own_hooks_file_with_its_events_matchers_and_timeout_unit():
    claude = _hook_commands(REPO / "hooks/hooks.json")
    gemini = _hook_commands(GEMINI_ROOT / "hooks/hooks.json")
    assert {event for event, _, _ in claude} == {"PreToolUse", "PostToolUse", "PostToolUseFailure"}
    assert {event for event, _, _ in gemini} == {"BeforeTool", "AfterTool"}
    for _event, _matcher, hook in claude:
        assert 1 <= hook["timeout"] <= 60, "Claude Code hook timeouts are seconds"
        assert '"${CLAUDE_PLUGIN_ROOT}/hooks/tool_hook.py"' in hook["command"] and " -S " in hook["command"]
    for _event, _matcher, hook in gemini:
        assert hook["timeout"] >= 1000, "Gemini CLI hook timeouts are milliseconds"
        assert (REPO / _expand(hook["command"].split('"')[1])).resolve() == REPO / "hooks/tool_hook.py"
    pre = {matcher for event, matcher, _ in claude + gemini if event in ("PreToolUse", "BeforeTool")}
    edit_tools = ["Write", "Edit", "NotebookEdit", "write_file", "replace"]
    other_tools = ["Read", "Bash", "read_file", "run_shell_command", "mcp_task_manager_list_tasks", "WebFetch"]
    for name in edit_tools:
        assert any(re.search(m, name) for m in pre), f"{name} starts no gate"
    for name in other_tools:
        assert not any(re.search(m, name) for m in pre), f"the gate starts Python for {name} needlessly"
