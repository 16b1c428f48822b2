"""The statuses and the MCP tool names are written once, in hypervisor.core.rules (light core: the hooks use them too),
and every other module takes them from there: a rename in one place can never leave a second spelling behind."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

from conftest import REPO

from hypervisor.core import rules
from hypervisor.frontends import mcp_server
from hypervisor.hooks import gate, tracker
from hypervisor.hooks import payload as hookinput

PACKAGE = REPO / "src" / "hypervisor"


def string_constants(path: Path) -> list[tuple[int, str, bool]]:
    """(line, value, whether it stands in a tuple, list or set display) of each string constant of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    listed = {id(element) for node in ast.walk(tree) if isinstance(node, (ast.Tuple, ast.List, ast.Set))
              for element in node.elts}  # fmt: skip
    return [(node.lineno, node.value, id(node) in listed) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]  # fmt: skip


def test_tool_names_are_spelled_only_in_rules():
    """A host's name of a tool, the claim tool's own name, or a collection of tool names: only in rules.py. (A bare
    name elsewhere, such as a release reason "update_task", is a value of its own.)"""
    qualified = {f"mcp__plugin_hypervisor_task_manager__{tool}" for tool in rules.MCP_TOOLS}
    qualified |= {f"mcp_task_manager_{tool}" for tool in rules.MCP_TOOLS} | {rules.MCP_CLAIM_TOOL}
    found = [f"{path.name}:{line}: {value!r}" for path in sorted(PACKAGE.rglob("*.py")) if path.name != "rules.py"
             for line, value, listed in string_constants(path)
             if value in qualified or (listed and value in rules.MCP_TOOLS)]  # fmt: skip
    assert not found, "tool names written outside rules.py: " + ", ".join(found)


def test_the_mcp_status_literal_is_rules_statuses():
    assert typing.get_args(mcp_server.Status) == rules.STATUSES
    tree = ast.parse((PACKAGE / "frontends" / "mcp_server.py").read_text(encoding="utf-8"))
    spelled = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Literal"
        and any(isinstance(c, ast.Constant) and c.value in rules.STATUSES for c in ast.walk(node.slice))
    ]
    assert not spelled, f"mcp_server.py spells the statuses out again on line(s) {spelled}"


def test_every_user_takes_the_names_from_rules():
    assert mcp_server.TOOL_NAMES == rules.MCP_TOOLS and mcp_server.SERVER_NAME == rules.MCP_SERVER
    assert hookinput.MCP_SERVER == rules.MCP_SERVER
    assert tracker.CLAIMING_TOOLS == rules.MCP_CLAIMING_TOOLS <= set(rules.MCP_TOOLS)
    assert gate.CLAIM_TOOL == {"claude": "mcp__plugin_hypervisor_task_manager__claim_next_task",
                               "gemini": "mcp_task_manager_claim_next_task"}  # fmt: skip
    assert rules.MCP_CLAIM_TOOL in rules.MCP_TOOLS
    for host, prefix in rules.MCP_TOOL_PREFIX.items():
        call = hookinput.parse(f'{{"hook_event_name": "{"PostToolUse" if host == "claude" else "AfterTool"}", '
                               f'"tool_name": "{prefix}claim_next_task", "cwd": "/"}}', {})  # fmt: skip
        assert call.task_tool == rules.MCP_CLAIM_TOOL, host
