"""The Gemini CLI extension installed the way the README tells a user to, gating edits in the very first session.

A fresh copy of this repository as a user would have it (committed, no .venv, no build/) stands in for the
published repository. In a fresh HOME the README's commands run exactly as written, through bash, with only the
repository URL filled in: `git clone <url> ~/hypervisor`, then `cd ~/hypervisor && gemini extensions link gemini
--consent` (no GEMINI_CLI_TRUST_WORKSPACE: it must not hang, and it trusts the clone, not the home folder).
Then real headless `gemini` sessions, driven by the scripted fake model, in a project whose .hypervisor.yaml says
`gate: all`: a `write_file` without a claim is refused by the extension's hook (the file is not written), and the
same call under a claim goes through. Only the hooks are needed (stdlib); the MCP server may still be making its
venv. Why not `gemini extensions install`: it copies gemini/ alone (a local path) or needs gemini-extension.json at
the repository root (a git URL), where hooks/hooks.json is Claude Code's. These fail, never skip, without the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess

from conftest import REPO, run_cli, write_task
from fake_gemini import FakeGemini, call, function_responses, response_text, text
from gemini_cli import hermetic_gemini_env, prepare_home, run_gemini
from install_env import make_clone

from hypervisor.supervisor import agents

URL = "<hypervisor git URL>"
README_COMMANDS = (
    f"git clone {URL} ~/hypervisor",
    "cd ~/hypervisor && gemini extensions link gemini --consent",
)
SESSION_TIMEOUT = 600  # an upper bound: the MCP server of a fresh clone may be making its venv meanwhile


def test_the_readme_and_the_not_found_message_give_these_commands():
    readme = (REPO / "README.md").read_text()
    missing = [command for command in README_COMMANDS if command not in readme]
    assert not missing, f"README.md does not document {missing}"
    assert f"`{README_COMMANDS[0].replace(URL, agents.SOURCE)}`" in agents.GET_GEMINI
    assert f"`{README_COMMANDS[1]}`" in agents.GET_GEMINI


def test_the_readme_install_gates_edits_in_the_first_session(gemini, tmp_path):
    published = make_clone(tmp_path / "published")
    assert not (published / ".venv").exists()
    home = prepare_home(tmp_path / "home")  # a user's settings: API-key auth (the fake model), no telemetry
    env = hermetic_gemini_env("http://127.0.0.1:9", home)
    env.pop("GEMINI_CLI_TRUST_WORKSPACE")  # as a user runs it: the commands must neither need it nor hang
    env["PATH"] = os.path.dirname(gemini) + os.pathsep + env["PATH"]
    for command in README_COMMANDS:
        done = subprocess.run(["bash", "-c", command.replace(URL, str(published))], cwd=str(home), env=env,
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
        assert done.returncode == 0, f"$ {command}\n-> {done.returncode}\n{done.stdout}\n{done.stderr}"
    clone = home / "hypervisor"
    record = json.loads((home / ".gemini/extensions/hypervisor/.gemini-extension-install.json").read_text())
    assert record == {"source": str(clone / "gemini"), "type": "link"}, record
    trusted = json.loads((home / ".gemini" / "trustedFolders.json").read_text())
    assert trusted == {str(clone): "TRUST_FOLDER"}, trusted  # the clone, never the whole home folder

    project = tmp_path / "project"
    write_task(project / "tasks", "t1", status="active", title="Write the notes")
    (project / ".hypervisor.yaml").write_text("tasks: tasks\ngate: all\n")

    # The first session after the install: no claim, so the hook refuses the write.
    script = [call("write_file", {"file_path": "notes.md", "content": "notes\n"}), text("FIRST-DONE")]
    with FakeGemini(script) as model:
        first = run_gemini("Write the notes.", project, model.url, home=home, gemini=gemini, timeout=SESSION_TIMEOUT)
        assert first.returncode == 0, first.describe()
        assert model.played("main") == len(script) and not model.problems, (model.problems, first.describe())
        [refused] = function_responses(model.requests[-1])
    assert "error" in refused["response"], refused
    reason = response_text(refused)
    assert "Tool execution blocked: hypervisor:" in reason and "holds no claim" in reason, reason
    assert "mcp_task_manager_claim_next_task" in reason, reason
    assert not (project / "notes.md").exists()
    assert "Invalid hook event name" not in first.stderr, first.describe()

    # The same call under a claim (as `hypervisor run` hands one to a worker) goes through: the hook is alive.
    claim = json.loads(run_cli("claim", "t1", "--caller", "w1", "--json", "--tasks", str(project / "tasks"),
                               check=0).stdout)  # fmt: skip
    worker = {"HYPERVISOR_WORKER": "1", "HYPERVISOR_TASK_ID": "t1", "HYPERVISOR_CLAIM_TOKEN": claim["claim_token"]}
    script = [call("write_file", {"file_path": "notes.md", "content": "notes\n"}), text("SECOND-DONE")]
    with FakeGemini(script) as model:
        second = run_gemini("Write the notes.", project, model.url, home=home, gemini=gemini, env=worker,
                            timeout=SESSION_TIMEOUT)  # fmt: skip
        assert second.returncode == 0, second.describe()
        assert model.played("main") == len(script) and not model.problems, (model.problems, second.describe())
        [allowed] = function_responses(model.requests[-1])
    assert "error" not in allowed["response"], allowed
    assert (project / "notes.md").read_text() == "notes\n"
    journal = project / "tasks" / ".hypervisor" / "journal"
    assert any("notes.md" in path.read_text() for path in journal.rglob("*") if path.is_file()), journal
