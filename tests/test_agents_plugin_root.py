"""Where the hypervisor package finds its plugin files (prompts/, .claude-plugin/) when it is not run from a
checkout: `agents.plugin_root()` and the Gemini agent's check, against the files the real CLIs write.

A fresh clone of this repository is installed with the real `claude plugin marketplace add` + `claude plugin
install hypervisor@hypervisor` (which writes ~/.claude/plugins/installed_plugins.json) and linked or installed
with the real `gemini extensions link|install` (which writes ~/.gemini/extensions/hypervisor/
.gemini-extension-install.json). The in-process tests stand in for a pip-installed package by making
`checkout_root()` find nothing; the last test pip-installs the clone into a scratch venv for real and runs
`hypervisor run --agent claude` from it. These fail, never skip, without the CLIs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest
from conftest import REPO, write_task
from gemini_cli import hermetic_gemini_env, link_extension, prepare_home
from install_env import install_plugin, make_clone

from hypervisor.core.errors import UsageError
from hypervisor.supervisor import agents


@pytest.fixture(autouse=True)
def user_env(monkeypatch, tmp_path):
    """A user's environment: no HYPERVISOR_*, CLAUDE_CONFIG_DIR or GEMINI_CLI_HOME, and an empty HOME."""
    for key in [key for key in os.environ if key.startswith("HYPERVISOR_")] + ["CLAUDE_CONFIG_DIR", "GEMINI_CLI_HOME"]:
        monkeypatch.delenv(key, raising=False)
    home = tmp_path / "empty-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def installed_package(monkeypatch):
    """The package as pip installs it: site-packages is not a checkout, so only the user's installs can help."""
    monkeypatch.setattr(agents, "checkout_root", lambda: None)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    return make_clone(tmp_path_factory.mktemp("plugin-root") / "hypervisor")


@pytest.fixture(scope="module")
def claude_install(claude, clone, tmp_path_factory):
    """A HOME in which the real Claude Code installed the plugin from the clone."""
    return install_plugin(claude, tmp_path_factory.mktemp("claude-user") / "home", clone)


def test_an_installed_package_finds_the_claude_code_plugin_install(claude_install, installed_package, monkeypatch):
    monkeypatch.setenv("HOME", str(claude_install.home))
    record = claude_install.installed_plugins["plugins"]["hypervisor@hypervisor"]
    assert [entry["installPath"] for entry in record] == [str(claude_install.cache)], record

    assert agents.plugin_root() == str(claude_install.cache)
    agent = agents.ClaudeAgent(exe="/bin/true")
    agent.check()
    argv = agent.argv(agents.Job("t1", "T", "t1.md", "tok", "w1", 1, 3, "run", str(claude_install.home)))
    assert argv[argv.index("--plugin-dir") + 1] == str(claude_install.cache)
    assert agent.prompt == (claude_install.cache / "prompts" / "worker.md").read_text().rstrip("\n")

    # CLAUDE_CONFIG_DIR moves ~/.claude, as it does for Claude Code itself.
    monkeypatch.setenv("HOME", str(claude_install.home.parent))
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(claude_install.claude_dir))
    assert agents.plugin_root() == str(claude_install.cache)


def test_a_recorded_install_that_is_gone_or_for_another_project_comes_after_the_users(claude_install, tmp_path,
                                                                                      installed_package, monkeypatch):  # fmt: skip
    home = tmp_path / "home"
    shutil.copytree(claude_install.claude_dir, home / ".claude", symlinks=True)
    monkeypatch.setenv("HOME", str(home))
    path = home / ".claude" / "plugins" / "installed_plugins.json"
    data = json.loads(path.read_text())
    [user] = data["plugins"]["hypervisor@hypervisor"]
    other_project = shutil.copytree(claude_install.cache, tmp_path / "other-project-copy")
    here_project = shutil.copytree(claude_install.cache, tmp_path / "this-project-copy")
    newer = {**user, "lastUpdated": "2999-01-01T00:00:00.000Z"}
    data["plugins"]["hypervisor@hypervisor"] = [
        {**newer, "installPath": str(tmp_path / "deleted")},  # newest, but no longer on disk
        {**newer, "scope": "project", "projectPath": str(tmp_path / "elsewhere"), "installPath": str(other_project)},
        user,
    ]
    path.write_text(json.dumps(data))
    assert agents.plugin_root() == str(claude_install.cache)

    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    data["plugins"]["hypervisor@hypervisor"].append(
        {**user, "scope": "local", "projectPath": str(project), "installPath": str(here_project)}
    )
    path.write_text(json.dumps(data))
    monkeypatch.chdir(project / "sub")
    assert agents.plugin_root() == str(here_project)


def test_the_variable_and_the_checkout_come_first(claude_install, clone, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(claude_install.home))
    assert agents.plugin_root() == str(REPO)  # tests run from this checkout
    monkeypatch.setenv("HYPERVISOR_PLUGIN_ROOT", str(clone))
    assert agents.plugin_root() == str(clone)
    monkeypatch.setenv("HYPERVISOR_PLUGIN_ROOT", str(tmp_path))
    with pytest.raises(UsageError) as refused:
        agents.plugin_root()
    assert str(refused.value) == (f"HYPERVISOR_PLUGIN_ROOT={tmp_path} holds no .claude-plugin/plugin.json: point it "
                                  "at a hypervisor clone, or unset it")  # fmt: skip


def test_a_linked_gemini_extension_names_its_clone(gemini, clone, tmp_path, installed_package, monkeypatch):
    home = prepare_home(tmp_path / "gemini-user")
    link_extension(clone / "gemini", home, gemini=gemini)
    record = json.loads((home / ".gemini/extensions/hypervisor/.gemini-extension-install.json").read_text())
    assert record == {"source": str(clone / "gemini"), "type": "link"}, record
    monkeypatch.setenv("HOME", str(home))

    assert agents.plugin_root() == str(clone)  # for --agent claude too: a linked clone is a whole plugin
    agent = agents.GeminiAgent(exe=gemini)
    agent.check()
    assert agent.prompt == (clone / "prompts" / "gemini-task-worker.md").read_text().rstrip("\n")

    # GEMINI_CLI_HOME moves ~/.gemini, as it does for Gemini CLI itself.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GEMINI_CLI_HOME", str(home))
    assert agents.gemini_extension_root() == str(clone)


def test_a_copied_or_orphaned_gemini_extension_is_refused_with_the_fix(gemini, clone, tmp_path, monkeypatch):
    home = prepare_home(tmp_path / "gemini-user")
    done = subprocess.run([gemini, "extensions", "install", str(clone / "gemini"), "--consent"], cwd=str(home),
                          env=hermetic_gemini_env("http://127.0.0.1:9", home), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    installed = home / ".gemini" / "extensions" / "hypervisor"
    assert json.loads((installed / ".gemini-extension-install.json").read_text())["type"] == "local"
    assert not (installed.parent / "hooks").exists()  # what `${extensionPath}/../hooks/tool_hook.py` names
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(UsageError) as refused:
        agents.GeminiAgent(exe=gemini).check()
    message = str(refused.value)
    assert "\n" not in message and f"extension in {installed} is a copy (local install)" in message, message
    assert "gemini extensions uninstall hypervisor" in message and "gemini extensions link gemini --consent" in message

    # Linked from a clone that was deleted since.
    gone = shutil.copytree(clone, tmp_path / "moved-away")
    home2 = prepare_home(tmp_path / "gemini-user-2")
    link_extension(gone / "gemini", home2, gemini=gemini)
    shutil.rmtree(gone)
    monkeypatch.setenv("HOME", str(home2))
    with pytest.raises(UsageError) as refused:
        agents.GeminiAgent(exe=gemini).check()
    assert f"linked from {gone / 'gemini'}, but {gone / 'gemini' / 'gemini-extension.json'} is missing" in str(
        refused.value
    )


def test_nothing_found_is_one_line_saying_how_to_get_it(installed_package):
    with pytest.raises(UsageError) as refused:
        agents.plugin_root()
    message = str(refused.value)
    assert "\n" not in message, message
    assert "`claude plugin marketplace add " in message and "`claude plugin install hypervisor@hypervisor`" in message
    assert "gemini extensions link gemini --consent`" in message and "HYPERVISOR_PLUGIN_ROOT" in message

    with pytest.raises(UsageError) as refused:
        agents.GeminiAgent(exe="/bin/true").check()
    message = str(refused.value)
    assert "\n" not in message and "the hypervisor extension is not installed for this user" in message, message
    assert "`git clone " in message and "gemini extensions link gemini --consent`" in message


def test_a_pip_installed_package_runs_claude_with_the_installed_plugin(claude_install, clone, tmp_path):
    """`pip install` of the repository (not editable) into a scratch venv: `hypervisor --help` works, and
    `hypervisor run --agent claude` from that venv passes the Claude Code install as --plugin-dir."""
    source = shutil.copytree(clone, tmp_path / "source", ignore=shutil.ignore_patterns(".git"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python, hypervisor = env_dir / "bin" / "python", env_dir / "bin" / "hypervisor"
    pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          "-c", str(source / "requirements.lock"), str(source)],
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    shown = subprocess.run([str(python), "-m", "pip", "show", "hypervisor-tasks"], capture_output=True, text=True)
    assert shown.returncode == 0 and "Name: hypervisor-tasks" in shown.stdout, shown.stdout + shown.stderr
    where = subprocess.run([str(python), "-c", "import hypervisor; print(hypervisor.__file__)"], cwd=str(tmp_path),
                           capture_output=True, text=True)  # fmt: skip
    assert where.stdout.startswith(str(env_dir)), where.stdout + where.stderr

    clean = {key: value for key, value in os.environ.items()
             if not key.startswith(("HYPERVISOR_", "CLAUDE", "GEMINI_", "VIRTUAL_ENV", "PYTHON"))}  # fmt: skip
    helped = subprocess.run([str(hypervisor), "--help"], env=clean, cwd=str(tmp_path), capture_output=True, text=True)
    assert helped.returncode == 0 and "Usage: hypervisor" in helped.stdout, helped.stdout + helped.stderr

    project = tmp_path / "project"
    write_task(project / "tasks", "t1", status="active", title="One task")
    fake = tmp_path / "fake-claude"
    fake.write_text(f"#!{python}\n"
                    "import json, os, subprocess, sys\n"
                    "json.dump(sys.argv[1:], open(os.environ['FAKE_CLAUDE_ARGV'], 'w'))\n"
                    f"subprocess.run([{str(hypervisor)!r}, 'complete', os.environ['HYPERVISOR_TASK_ID'], '--token', "
                    "os.environ['HYPERVISOR_CLAIM_TOKEN'], '--summary', 'fake claude'], check=True)\n")  # fmt: skip
    fake.chmod(0o755)
    argv_file = tmp_path / "argv.json"
    env = {
        **clean,
        "HOME": str(claude_install.home),
        "HYPERVISOR_CLAUDE": str(fake),
        "FAKE_CLAUDE_ARGV": str(argv_file),
    }
    run = subprocess.run([str(hypervisor), "run", "--tasks", "tasks", "--agent", "claude", "--workers", "1"],
                         cwd=str(project), env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    argv = json.loads(argv_file.read_text())
    assert argv[argv.index("--plugin-dir") + 1] == str(claude_install.cache), argv
    assert "status: done" in (project / "tasks" / "t1.md").read_text()

    # The same package for a user who installed nothing: one line saying how to get the plugin.
    empty = tmp_path / "nobody"
    empty.mkdir()
    write_task(project / "tasks", "t2", status="active", title="Another task")
    refused = subprocess.run([str(hypervisor), "run", "--tasks", "tasks", "--agent", "claude"], cwd=str(project),
                             env={**env, "HOME": str(empty)}, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    lines = [line for line in refused.stderr.splitlines() if "plugin files were not found" in line]
    assert len(lines) == 1 and "claude plugin install hypervisor@hypervisor" in lines[0], refused.stderr
    assert "gemini extensions link" in lines[0], refused.stderr
