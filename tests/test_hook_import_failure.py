"""A damaged install never costs the agent's session its tool call: the real hook script, on a copy of the plugin
whose hypervisor.hooks.edge cannot be imported, exits 0, prints nothing on stdout (the call goes ahead) and says why on
stderr."""

from __future__ import annotations

import json

import pytest
from test_bytecode import make_project, package, plugin_copy, pycs, run_hook


def break_by_syntax(plugin):
    (package(plugin) / "hooks" / "edge.py").write_text("def main(:\n    pass\n", encoding="utf-8")


def break_by_removal(plugin):
    (package(plugin) / "hooks" / "edge.py").unlink()


def break_a_dependency(plugin):  # a module the hook imports on the way, not hooks/edge.py itself
    (package(plugin) / "hooks" / "gate.py").write_text("raise RuntimeError('half-written install')\n", encoding="utf-8")


@pytest.mark.parametrize(("damage", "named"), [(break_by_syntax, "SyntaxError"), (break_by_removal, "hypervisor.hooks.edge"),
                                               (break_a_dependency, "half-written install")],
                         ids=["syntax-error", "missing", "a-dependency-raises"])  # fmt: skip
@pytest.mark.parametrize("dont_write", [True, False], ids=["DONTWRITE", "bytecode-written"])
def test_a_hook_that_cannot_import_its_package_allows_the_call_and_says_why(tmp_path, damage, named, dont_write):
    plugin, project = plugin_copy(tmp_path / "plugin"), make_project(tmp_path / "project")
    damage(plugin)
    result = run_hook(plugin, project, dont_write=dont_write)
    assert result.returncode == 0, result
    assert result.stdout == "", "nothing on stdout: the call goes ahead"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hypervisor hook: cannot load"), result.stderr
    assert named in lines[0] and "goes ahead unchecked" in lines[0], result.stderr
    if damage is break_by_syntax:
        assert "hooks" not in pycs(plugin), "no bytecode is written for a module that failed to compile"


def test_the_intact_copy_still_answers(tmp_path):
    """The control: the same copy, undamaged, denies the unclaimed worker's edit."""
    plugin, project = plugin_copy(tmp_path / "plugin"), make_project(tmp_path / "project")
    result = run_hook(plugin, project)
    assert result.returncode == 0 and result.stderr == "", result
    assert json.loads(result.stdout)["hookSpecificOutput"]["permissionDecision"] == "deny"
