"""cli_fast against click: each Spec is its click command's declaration, each parse is click's, each echo is
click.echo's, and a command run either way prints and exits alike."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import click
import pytest
from conftest import run_cli, write_task
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.frontends import cli_fast
from hypervisor.frontends.cli import cli
from hypervisor.frontends.cli_fast import SPECS, TASKS_ENVVAR, parse

CLICK_PATH = [sys.executable, "-m", "hypervisor.frontends.cli"]


def command(name: str) -> click.Command:
    return cli.get_command(click.Context(cli), name)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_spec_is_its_click_commands_declaration(name):
    spec, declared = SPECS[name], command(name)
    options = {}
    for param in declared.params:
        if isinstance(param, click.Argument):
            assert (param.name, param.required, param.nargs) == (spec.argument, spec.argument_required, 1)
            continue
        if param.name == "help":
            continue
        assert param.type is click.STRING or param.is_flag, param.name
        assert not param.multiple and param.nargs == 1 and not param.secondary_opts
        assert [opt for opt in param.opts if not opt.startswith("--")] == []
        assert param.envvar == (TASKS_ENVVAR if param.name == "tasks" else None), param.name
        assert (param.callback is not None) == (param.name == "backend"), param.name
        if param.is_flag:
            assert param.opts == ["--json"] and param.name == "as_json"
        else:
            options.update(dict.fromkeys(param.opts, param.name))
            assert param.required == (param.name in spec.required), param.name
    assert options == spec.options
    assert sum(isinstance(param, click.Argument) for param in declared.params) == 1


def click_values(name: str, args: list[str]) -> dict:
    """What click passes the command for `args`, and the --backend its callback keeps."""
    with command(name).make_context(name, list(args)) as ctx:
        return {**ctx.params, "backend": ctx.meta.get("backend")}


VALUES = ["w1", "", "a b", "é", "10m", "-x", "--json", "t1", "=", "x=y"]
ODD = ["-h", "--help", "--", "-", "--cal", "--json=1", "--no-json", "-c", "--caller", "t2"]


@st.composite
def command_lines(draw) -> tuple[str, list[str]]:
    """A hot command and its words: each option of its own at most once with a value (`--opt v` or `--opt=v`),
    maybe --json and an ID, in any order; sometimes an odd word too (click's to refuse or to parse)."""
    name = draw(st.sampled_from(sorted(SPECS)))
    pieces = [[word] for word in draw(st.lists(st.sampled_from(["--json", "t1", ""]), max_size=2, unique=True))]
    for option in draw(st.lists(st.sampled_from(sorted(SPECS[name].options)), unique=True)):
        value = draw(st.sampled_from(VALUES))
        pieces.append(draw(st.sampled_from([[option, value], [f"{option}={value}"]])))
    pieces += [[word] for word in draw(st.lists(st.sampled_from(ODD), max_size=1))]
    return name, [word for piece in draw(st.permutations(pieces)) for word in piece]


@settings(max_examples=600, deadline=None)
@given(line=command_lines(), envvar=st.sampled_from([None, "", "/from/env"]))
def test_a_command_line_the_fast_path_takes_parses_as_click_parses_it(line, envvar):
    name, args = line
    saved = os.environ.pop(TASKS_ENVVAR, None)
    try:
        if envvar is not None:
            os.environ[TASKS_ENVVAR] = envvar
        values = parse(SPECS[name], args)
        if values is not None:
            assert values == click_values(name, args)
    finally:
        os.environ.pop(TASKS_ENVVAR, None)
        if saved is not None:
            os.environ[TASKS_ENVVAR] = saved


@pytest.mark.parametrize(
    "args",
    [
        ["claim", "--caller", "w1", "--json"],
        ["claim", "t1", "--caller=w1", "--lease", "10m", "--tasks", "r", "--backend", "file", "--project", "p"],
        ["claim", "--json", "--caller", "w 1", "t1"],
        ["renew", "t1", "--token", "T", "--lease", "1h"],
        ["release", "t1", "--caller", "w1", "--reason", "later"],
        ["complete", "t1", "--token", "T", "--summary", "fixed it: see the log", "--commit", "abc123"],
        ["block", "t1", "--caller", "w1", "--reason", ""],
        ["show", "t1", "--json", "--tasks="],
    ],
)
def test_the_plain_forms_an_agent_writes_are_taken(args):
    values = parse(SPECS[args[0]], args[1:])
    assert values is not None and values == click_values(args[0], args[1:])


class Terminal(io.TextIOWrapper):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("text", ["plain\n", "", "\x1b[31mred\x1b[0m and \x1b[1mbold\x1b[0m\n", "é ✓\n", "\x1b["])
@pytest.mark.parametrize("stream_class", [io.TextIOWrapper, Terminal])
def test_echo_writes_what_click_echo_writes(text, stream_class):
    written = []
    for echo in (cli_fast.echo, lambda value, stream: click.echo(value, file=stream, nl=False)):
        stream = stream_class(io.BytesIO(), encoding="utf-8")
        echo(text, stream)
        written.append(stream.buffer.getvalue())
    assert written[0] == written[1]


def test_only_streams_click_writes_to_as_they_are_are_plain():
    assert cli_fast._plain(io.TextIOWrapper(io.BytesIO(), encoding="utf-8"))
    assert not cli_fast._plain(io.TextIOWrapper(io.BytesIO(), encoding="ascii"))  # click rewraps it as UTF-8
    assert not cli_fast._plain(io.StringIO())
    assert not cli_fast._plain(None)


ENTRIES = {"fast": "hypervisor", "click": "hypervisor.frontends.cli"}  # `python -m` either: the same CLI
LEASE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def fresh(tmp_path, side: str) -> str:
    """A store of its own for `side`, the same for both: an active task with a styled body, and a done one."""
    root = tmp_path / side / "tasks"
    write_task(root, "a", status="active", title="A", body="\x1b[31mcoloured\x1b[0m body\n")
    write_task(root, "done-one", status="done")
    return str(root)


def run_as(side: str, root: str, *args: str) -> tuple[int, str, str]:
    """`hypervisor ARGS --tasks ROOT` through one side, its store's folder written as <side> in its output."""
    env = {k: v for k, v in os.environ.items() if k != TASKS_ENVVAR}
    done = subprocess.run([sys.executable, "-m", ENTRIES[side], *args, "--tasks", root], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    return done.returncode, done.stdout.replace(f"/{side}/", "/<side>/"), done.stderr.replace(f"/{side}/", "/<side>/")


@pytest.mark.parametrize(
    "args, code",
    [
        (["claim", "nope", "--caller", "w1"], 1),
        (["claim", "done-one", "--caller", "w1"], 1),
        (["claim", "a", "--caller", "w1", "--lease", "soon"], 2),
        (["claim", "a", "--caller", "w1", "--backend", "nope://x"], 1),
        (["claim", "--caller", "w1", "--project", "none-such"], 3),
        (["claim", "--lease", "10m"], 2),
        (["renew", "a", "--token", "nope"], 1),
        (["release", "a"], 2),
        (["complete", "a", "--token", "T"], 2),
        (["block", "a", "--caller", "w9", "--reason", "r"], 1),
        (["show", "nope"], 1),
        (["show", "a"], 0),
        (["show", "a", "--json"], 0),
        (["show", "../a"], 1),
    ],
)
def test_a_command_prints_and_exits_alike_either_way(tmp_path, args, code):
    fast, through_click = (run_as(side, fresh(tmp_path, side), *args) for side in ENTRIES)
    assert fast[0] == code, fast
    assert fast == through_click


def test_a_claims_whole_life_prints_alike_either_way(tmp_path):
    lives = []
    for side in ENTRIES:
        root = fresh(tmp_path, side)
        claimed = run_as(side, root, "claim", "--caller", "w1")
        token = claimed[1].split("token: ")[1].strip()
        steps = [claimed, run_as(side, root, "renew", "a", "--token", token),
                 run_as(side, root, "release", "a", "--token", token, "--reason", "later"),
                 run_as(side, root, "claim", "a", "--caller", "w1", "--json"),
                 run_as(side, root, "complete", "a", "--caller", "w1", "--summary", "done", "--json")]  # fmt: skip
        tokens = re.compile("|".join([token, *re.findall(r'"claim_token": "(\w+)"', steps[3][1])]))
        lives.append([(code, LEASE_TIME.sub("<time>", tokens.sub("<token>", out)), err) for code, out, err in steps])
    assert [code for code, _, _ in lives[0]] == [0] * 5
    assert lives[0] == lives[1]


def test_hypervisor_tasks_reaches_the_fast_path_as_it_reaches_click(tmp_path):
    root = fresh(tmp_path, "env")
    shown = run_cli("show", "a", env={TASKS_ENVVAR: root}, check=0)
    assert shown.stdout.startswith(f"# {root}/a.md\n") and "coloured" in shown.stdout and "\x1b" not in shown.stdout
