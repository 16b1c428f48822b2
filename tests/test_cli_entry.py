"""The CLI's start: the command table, the recorded --help, and what each kind of call imports (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.utils import _make_default_short_help
from conftest import run_cli, write_task

from hypervisor import __version__
from hypervisor.frontends import cli_board, cli_claims, cli_help, cli_new, cli_run, cli_tasks
from hypervisor.frontends.cli import cli
from hypervisor.frontends.cli_entry import COMMANDS, HELP_FILE

CLICK_PATH = [sys.executable, "-m", "hypervisor.frontends.cli"]  # the same CLI, always through click
CONSOLE_SCRIPT = Path(sys.executable).with_name("hypervisor")
# Runs `hypervisor ARGS` in this process as the console script does, then writes the modules it loaded.
PROBE = (
    "import atexit, os, sys\n"
    "atexit.register(lambda: open(os.environ['MODULES_OUT'], 'w').write('\\n'.join(sorted(sys.modules))))\n"
    "sys.argv = ['hypervisor', *sys.argv[1:]]\n"
    "from hypervisor.frontends.cli_entry import main\n"
    "main()\n"
)
# What a hot command has no use for: click and the command modules, the heavy dependencies, the other layers.
UNUSED_BY_HOT_COMMANDS = ("click", "rich", "jsonschema", "mcp", "redis", "secrets", "socket", "hypervisor.supervisor",
                          "hypervisor.triage", "hypervisor.hooks", "hypervisor.frontends.cli",
                          "hypervisor.frontends.cli_claims", "hypervisor.frontends.cli_tasks", "hypervisor.frontends.cli_new",
                          "hypervisor.frontends.cli_run", "hypervisor.frontends.mcp_server")  # fmt: skip


def loaded_by(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `hypervisor ARGS` in a fresh interpreter: the finished process and every module it had loaded."""
    out = tmp_path / "modules.txt"
    full_env = {**os.environ, **(env or {}), "MODULES_OUT": str(out)}
    full_env.pop("HYPERVISOR_TASKS", None)
    done = subprocess.run([sys.executable, "-c", PROBE, *args], env=full_env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    return done, set(out.read_text().split())


def within(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m in packages or m.startswith(tuple(p + "." for p in packages)))


def real_commands() -> dict[str, tuple[str, click.Command]]:
    """Every click command the command modules define: name -> (table target, command)."""
    found = {}
    for module in (cli_board, cli_claims, cli_new, cli_run, cli_tasks):
        for attribute, value in vars(module).items():
            if isinstance(value, click.Command):
                found[value.name] = (f".{module.__name__.rsplit('.', 1)[1]}:{attribute}", value)
    return found


def test_the_table_names_every_command_where_it_is_with_its_own_summary():
    commands = real_commands()
    assert {name: target for name, (target, _) in commands.items()} == {n: e.target for n, e in COMMANDS.items()}
    for name, (_, command) in commands.items():
        assert cli.get_command(click.Context(cli), name) is command
        assert not command.hidden and not command.deprecated and command.short_help is None
        for limit in range(1, 160):  # the listing is click's own at every width
            assert _make_default_short_help(COMMANDS[name].summary, limit) == command.get_short_help_str(limit), name
    assert cli.get_command(click.Context(cli), "nope") is None


def test_the_recorded_help_is_what_click_prints_for_the_group():
    stock = click.Group(name=cli.name, commands={name: command for name, (_, command) in real_commands().items()},
                        params=cli.params, help=cli.help, context_settings=cli.context_settings)  # fmt: skip
    with stock.make_context("hypervisor", [], resilient_parsing=True, terminal_width=78) as ctx:
        clicks_own = ctx.get_help() + "\n"
    assert cli_help.click_help() == clicks_own
    with open(HELP_FILE, encoding="utf-8") as handle:
        recorded = handle.read()
    assert recorded == clicks_own, "run `python -m hypervisor.frontends.cli_help` and commit cli_help.txt"
    assert recorded.isascii()  # so it reaches any stdout as click.echo would write it (which rewraps ASCII ones)


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["-h"]])
def test_version_and_help_are_clicks_words_without_importing_click(tmp_path, args):
    done, modules = loaded_by(tmp_path, *args)
    through_click = subprocess.run([*CLICK_PATH, *args], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, through_click.stdout, "")
    assert through_click.returncode == 0
    assert within(modules, ("hypervisor",)) == ["hypervisor", "hypervisor.frontends", "hypervisor.frontends.cli_entry"]
    assert not within(modules, ("click", "re", "typing", "importlib.metadata", "__future__"))


def test_a_narrow_terminal_gets_the_help_click_wraps_for_it():
    narrow = run_cli("--help", env={"COLUMNS": "60"}, check=0)
    env = {**os.environ, "COLUMNS": "60"}
    assert narrow.stdout == subprocess.run([*CLICK_PATH, "--help"], env=env, capture_output=True, text=True).stdout
    with open(HELP_FILE, encoding="utf-8") as handle:
        assert narrow.stdout != handle.read()


def test_no_arguments_and_unknown_commands_are_clicks_usage_errors():
    for args in ([], ["nope"], ["--version", "claim"], ["clam", "--caller", "w1"]):
        ours, theirs = run_cli(*args), subprocess.run([*CLICK_PATH, *args], capture_output=True, text=True)
        assert (ours.returncode, ours.stdout, ours.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr)
    assert "No such command 'nope'" in run_cli("nope", check=2).stderr


def test_shell_completion_still_completes_commands_and_options():
    def complete(words: str) -> list[str]:
        env = {"_HYPERVISOR_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
        return run_cli(env=env, check=0).stdout.split()

    assert complete("hypervisor cl") == ["plain,claim"]
    assert complete("hypervisor re") == ["plain,release", "plain,renew", "plain,reopen"]
    assert "plain,--caller" in complete("hypervisor claim --ca")
    assert "plain,--summary" in complete("hypervisor complete t1 --su")
    source = run_cli(env={"_HYPERVISOR_COMPLETE": "bash_source"}, check=0).stdout
    assert "_hypervisor_completion" in source and "_HYPERVISOR_COMPLETE=bash_complete" in source


def test_the_hot_commands_import_only_what_they_use(tmp_path, root):
    write_task(root, "a", status="active", title="A")
    write_task(root, "b", status="active", title="B", priority=3)
    tasks = ["--tasks", str(root)]
    done, modules = loaded_by(tmp_path, "claim", "--caller", "w1", "--json", *tasks)
    assert done.returncode == 0, done.stderr
    token = json.loads(done.stdout)["claim_token"]
    assert not within(modules, UNUSED_BY_HOT_COMMANDS), "claim"
    for args in (["renew", "a", "--token", token, "--lease", "1h"], ["show", "a"], ["show", "a", "--json"],
                 ["release", "a", "--token", token], ["claim", "a", "--caller", "w2"], ["block", "a", "--caller", "w2",
                 "--reason", "creds"], ["claim", "--caller", "w3", "--backend", "file"],
                 ["complete", "b", "--caller", "w3", "--summary", "done"]):  # fmt: skip
        done, modules = loaded_by(tmp_path, *args, *tasks)
        assert done.returncode == 0, (args, done.stderr)
        assert not within(modules, UNUSED_BY_HOT_COMMANDS), args
    refused, modules = loaded_by(tmp_path, "claim", "--caller", "w4", *tasks)
    assert refused.returncode == 3 and refused.stderr.startswith("hypervisor: ")
    assert not within(modules, UNUSED_BY_HOT_COMMANDS)


def test_a_hot_command_in_a_form_it_does_not_take_goes_through_click(tmp_path, root):
    write_task(root, "a", status="active")
    done, modules = loaded_by(tmp_path, "claim", "--caller", "w1", "--caller", "w1", "--tasks", str(root))
    assert done.returncode == 0 and "click" in modules
    done, modules = loaded_by(tmp_path, "show", "a", "-h")
    assert done.returncode == 0 and done.stdout.startswith("Usage: hypervisor show [OPTIONS] ID") and "click" in modules


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="no `hypervisor` installed beside this interpreter")
def test_the_installed_command_starts_without_importing_re():
    done = subprocess.run([sys.executable, "-X", "importtime", str(CONSOLE_SCRIPT), "--version"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert done.stdout == f"hypervisor, version {__version__}\n"
    assert "hypervisor.frontends.cli_entry" in imported and not {"re", "click"} & imported
