"""The documentation of the CLI held to the CLI: docs/commands.md is each command's real --help, shell completion
works in a real bash through the installed `hypervisor` script, and every environment variable is in the README."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

from hypervisor.frontends import cli_docs
from hypervisor.frontends.cli_entry import COMMANDS

DOCS = REPO / "docs" / "commands.md"
README = REPO / "README.md"
INSTALLED = Path(sys.executable).parent / "hypervisor"  # scripts/hypervisor as pip installed it (cli_entry.main)


def installed_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERVISOR_", "_HYPERVISOR_", "COMP_"))}
    env.update(PATH=f"{INSTALLED.parent}{os.pathsep}/usr/bin{os.pathsep}/bin", COLUMNS="80", **extra)
    return env


def test_the_commands_reference_is_what_the_generator_writes_today():
    assert DOCS.is_file(), f"{DOCS} is missing: run `{cli_docs.REGENERATE}`"
    assert DOCS.read_text(encoding="utf-8") == cli_docs.render(), (
        f"{DOCS} differs from the commands' --help: run `{cli_docs.REGENERATE}` and commit it"
    )


def test_each_section_is_the_real_help_of_the_installed_command():
    """Not only click in this process: the `hypervisor` script users run (cli_entry.main), one process each."""
    assert INSTALLED.is_file(), f"{INSTALLED} is missing: run `python3 dev.py setup`"
    text = DOCS.read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## (hypervisor(?: [a-z-]+)?)\n\n```text\n(.*?)```$", text, re.S | re.M))
    assert sorted(sections) == sorted(["hypervisor", *(f"hypervisor {name}" for name in COMMANDS)])
    for title, body in sections.items():
        real = subprocess.run([str(INSTALLED), *title.split()[1:], "--help"], capture_output=True, text=True,
                              env=installed_env(), timeout=120)  # fmt: skip
        assert real.returncode == 0, (title, real.stderr)
        assert real.stdout == body, f"{title}: docs/commands.md differs from its --help"


def test_check_mode_fails_on_a_stale_file_and_says_how_to_regenerate(tmp_path, capsys):
    stale = tmp_path / "commands.md"
    stale.write_text(cli_docs.render().replace("Claim task ID", "Claim a task"), encoding="utf-8")
    assert cli_docs.main(["--check", str(stale)]) == 1
    assert f"run `{cli_docs.REGENERATE}`" in capsys.readouterr().err
    assert cli_docs.main([str(stale)]) == 0 and cli_docs.main(["--check", str(stale)]) == 0
    assert cli_docs.main(["--check", str(tmp_path / "missing.md")]) == 1


BASH_SESSION = r"""
set -e
eval "$(_HYPERVISOR_COMPLETE=bash_source hypervisor)"
complete -p hypervisor
ask() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); _hypervisor_completion hypervisor;
        echo "$*: ${COMPREPLY[*]}"; }
ask hypervisor re
ask hypervisor run --ag
ask hypervisor run --isolation ''
ask hypervisor claim --ca
"""


def test_bash_completion_as_the_readme_sets_it_up_completes_through_the_installed_script():
    assert INSTALLED.is_file(), f"{INSTALLED} is missing: run `python3 dev.py setup`"
    readme = README.read_text(encoding="utf-8")
    assert 'eval "$(_HYPERVISOR_COMPLETE=bash_source hypervisor)"' in readme
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", BASH_SESSION], capture_output=True, text=True,
                            env=installed_env(), timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "complete -o nosort -F _hypervisor_completion hypervisor"
    assert "hypervisor re: release renew reopen" in lines
    assert "hypervisor run --ag: --agent" in lines
    assert "hypervisor run --isolation : none worktree" in lines
    assert "hypervisor claim --ca: --caller" in lines


def environment_variables_read_or_set_by_the_code() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "src").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        names.update(re.findall(r"(?<![A-Za-z0-9])_?HYPERVISOR_[A-Z_]*[A-Z]", text))
        names.update(re.findall(r"""(?:environ|env)(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]+)["']""", text))
        for function in ast.walk(ast.parse(text)):  # what the agents' env() methods set for their workers
            if isinstance(function, ast.FunctionDef) and function.name in ("env", "worker_env"):
                names.update(node.value for node in ast.walk(function) if isinstance(node, ast.Constant)
                             and isinstance(node.value, str) and re.fullmatch(r"[A-Z][A-Z0-9_]+", node.value))  # fmt: skip
    return names


def test_every_environment_variable_is_in_the_readme_table():
    readme = README.read_text(encoding="utf-8")
    table = readme.split("### Environment variables", 1)[1].split("\n\n", 2)[1]
    documented = set(
        re.findall(r"`(_?[A-Z][A-Z0-9_]+)`", "\n".join(line.split(" | ")[0] for line in table.splitlines()))
    )
    found = environment_variables_read_or_set_by_the_code()
    assert {"HYPERVISOR_WORKER_NAME", "HYPERVISOR_PLUGIN_ROOT", "_HYPERVISOR_COMPLETE", "CLAUDE_CONFIG_DIR"} <= found
    missing = sorted(found - documented)
    assert not missing, f"environment variables the code uses but the README's table does not list: {missing}"
    for line in table.splitlines()[2:]:
        assert line.count(" | ") == 2 and line.split(" | ")[2].strip(" |"), f"a row without a default: {line}"
