"""Every message of issue 16 (parts 2, 3, 6, 7) as a user meets it: durations, the attempt rule and the dead letter,
exit codes and JSON on every path, and the smaller points. Each test fails on the text or code of before.

CliRunner (click, in process) where no process is needed; the real CLI (cli_fast's path) where the command is one
an agent loops on, so that both front ends are held to the same words."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import REPO, make_queue, run_cli, write_task

from hypervisor.claims import attempts as attempt_rule
from hypervisor.core.config import Config
from hypervisor.core.errors import UsageError
from hypervisor.core.timeutil import DURATION_FORMS, parse_duration, parse_iso
from hypervisor.frontends.cli import cli
from hypervisor.tasks import taskfile

FORMS = "write one of 90s, 30m, 2h, 1h30m or 1d"


def invoke(*args: str, cwd=None, monkeypatch=None):
    """`hypervisor ARGS` through click's group, in this process; stdout and stderr apart."""
    if cwd is not None:
        monkeypatch.chdir(cwd)
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def front(path) -> dict:
    return taskfile.read_doc(str(path)).data


def body(path) -> str:
    return taskfile.read_doc(str(path)).body


def claim_json(root, task_id, caller, lease="30m") -> dict:
    return json.loads(run_cli("claim", task_id, "--caller", caller, "--lease", lease, "--json",
                              "--tasks", str(root), check=0).stdout)  # fmt: skip


def take_over_when_expired(root, task_id, caller, lease="30m") -> dict:
    """Claim `task_id` as soon as the lease holding it has run out (polling the claim, which is refused until
    then): the condition waited for is the takeover itself, not a time."""
    deadline = time.monotonic() + 60
    while True:
        result = run_cli("claim", task_id, "--caller", caller, "--lease", lease, "--json", "--tasks", str(root))
        if result.returncode == 0:
            return json.loads(result.stdout)
        assert "already claimed" in result.stderr, result.stderr
        assert time.monotonic() < deadline, "the lease never ran out"
        time.sleep(0.05)


# -- 2. durations ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400),
                                               ("1d", 86400), ("1d2h", 93600), ("1.5h", 5400)])  # fmt: skip
def test_every_duration_form_is_accepted(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "10", "1.5", 30, 2.5])
def test_a_bare_number_is_refused_with_the_forms(text):
    """Before: '30' was 30 seconds and a YAML 30 too, silently."""
    with pytest.raises(UsageError) as refused:
        parse_duration(text, "--lease")
    assert str(refused.value) == f"--lease {text!r} is not a duration (a bare number has no unit): {FORMS}"


@pytest.mark.parametrize("text", ["soon", "1h1h", "1m2h", "", "h", "30x"])
def test_a_word_that_is_no_duration_is_refused_with_the_forms(text):
    with pytest.raises(UsageError, match=re.escape(f"is not a duration: {FORMS}")):
        parse_duration(text, "--lease")


def test_lease_1d_is_a_day_on_the_real_cli(root):
    """Before: `--lease 1d` was refused."""
    write_task(root, "a", status="active")
    claimed = claim_json(root, "a", "w1", lease="1d")
    assert abs(parse_iso(claimed["lease_expires_at"]) - time.time() - 86400) < 600


@pytest.mark.parametrize("command", [["claim", "a", "--caller", "w1"], ["renew", "a", "--caller", "w1"]])
def test_lease_30_is_refused_on_both_front_ends(root, command, monkeypatch):
    """Before: `--lease 30` gave a 30-second lease. Now exit 2 naming the option, the value and the forms, alike
    through cli_fast (the real process) and click."""
    write_task(root, "a", status="active")
    if command[0] == "renew":
        claim_json(root, "a", "w1")
    args = [*command, "--lease", "30", "--tasks", str(root)]
    expected = f"hypervisor: --lease '30' is not a duration (a bare number has no unit): {FORMS}\n"
    fast = run_cli(*args, check=2)
    assert fast.stderr == expected and fast.stdout == ""
    clicked = invoke(*args)
    assert clicked.exit_code == 2 and clicked.stderr == expected


def test_timeout_10_is_refused(root):
    write_task(root, "a", status="active")
    result = invoke("run", "--timeout", "10", "--tasks", str(root))
    assert result.exit_code == 2
    assert f"--timeout '10' is not a duration (a bare number has no unit): {FORMS}" in result.stderr
    assert front(root / "a.md")["status"] == "active"  # nothing was claimed


def test_lease_30_in_the_settings_is_refused_naming_the_file_and_field(tmp_path, monkeypatch):
    (tmp_path / "tasks").mkdir()
    (tmp_path / ".hypervisor.yaml").write_text("lease: 30\n")
    result = invoke("list", cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 2
    path = tmp_path / ".hypervisor.yaml"
    assert result.stderr == f"hypervisor: {path}: lease: 30 is not a duration (a bare number has no unit): {FORMS}\n"


def test_the_batch_worker_uses_the_same_rule(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "batch_worker.py"), "--lease", "30"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "is not a duration (a bare number has no unit)" in result.stderr


def test_the_help_names_the_duration_forms():
    for command in ("claim", "renew", "run"):
        assert DURATION_FORMS in " ".join(invoke(command, "--help").stdout.split()), command


# -- 3. attempts and the dead letter --------------------------------------------------------------------------------
def test_the_attempt_rule_is_stated_in_readme_help_and_mcp():
    """Before: nothing said that a release counts."""
    rule = " ".join(attempt_rule.RULE.split())
    readme = " ".join((REPO / "README.md").read_text().split())
    assert rule in readme
    for command in ("claim", "release"):
        assert rule in " ".join(invoke(command, "--help").stdout.split()), command
    recorded = json.loads((REPO / "src/hypervisor/frontends/mcp_handshake.json").read_text())
    for version, answers in recorded["versions"].items():
        tools = {tool["name"]: tool for tool in answers["tools/list"]["result"]["tools"]}
        for name in ("claim_next_task", "release_task"):
            assert rule in " ".join(tools[name]["description"].split()), (version, name)


def test_claim_and_release_say_how_many_attempts_are_left(root):
    """Before: `claimed a (attempt 1, lease until ...)` and `released a (now active)`."""
    write_task(root, "a", status="active")
    claimed = run_cli("claim", "a", "--caller", "w1", "--tasks", str(root), check=0).stdout
    assert claimed.startswith("claimed a (attempt 1 of 3, 2 left; lease until ")
    released = run_cli("release", "a", "--caller", "w1", "--tasks", str(root), check=0).stdout
    assert released == "released a (now active; attempt 1 of 3, 2 left)\n"
    again = claim_json(root, "a", "w2")
    assert (again["attempts"], again["attempts_left"], again["max_attempts"]) == (2, 1, 3)
    as_json = json.loads(run_cli("release", "a", "--caller", "w2", "--json", "--tasks", str(root), check=0).stdout)
    assert (as_json["attempts"], as_json["attempts_left"], as_json["max_attempts"]) == (2, 1, 3)
    last = run_cli("claim", "a", "--caller", "w3", "--tasks", str(root), check=0).stdout
    assert last.startswith("claimed a (attempt 3 of 3, the last: the next claim dead-letters it; lease until ")


def test_a_release_reason_goes_into_the_worker_log(root):
    """Before: only events.jsonl had it."""
    path = write_task(root, "a", status="active")
    claim_json(root, "a", "w1")
    run_cli("release", "a", "--caller", "w1", "--reason", "needs the API key", "--tasks", str(root), check=0)
    assert "· w1 · **released**\n  - needs the API key (attempt 1 of 3, 2 left)" in body(path)


def test_a_dead_letter_at_claim_logs_every_attempt_and_clears_the_assignee(root):
    """Before: `claim` dead-lettered the task with no worker-log entry, leaving the last claimer as assignee."""
    path = write_task(root, "a", status="active", assignee="alice")
    first = claim_json(root, "a", "w1")
    run_cli("release", "a", "--token", first["claim_token"], "--reason", "needs the API key", "--tasks", str(root),
            check=0)  # fmt: skip
    claim_json(root, "a", "w2", lease="1s")
    take_over_when_expired(root, "a", "w3", lease="1s")
    refused = run_cli("claim", "a", "--caller", "w4", "--tasks", str(root))
    while "already claimed" in refused.stderr:  # w3's lease still runs: wait for the claim that finds it over
        time.sleep(0.05)
        refused = run_cli("claim", "a", "--caller", "w4", "--tasks", str(root))
    assert refused.returncode == 1 and "its worker log lists each attempt" in refused.stderr
    fields = front(path)
    assert (fields["status"], fields["blocked_reason"], fields["attempts"]) == ("blocked", "max_attempts", 3)
    assert fields["assignee"] == "alice"  # as before the claims: nobody works on it now
    log = body(path).split("**dead letter**", 1)[1]
    assert "max_attempts: 3 attempts used, none ended with complete or block; last held by w3" in log
    assert re.search(r"attempt 1 · w1 at \S+Z · released: needs the API key", log), log
    assert re.search(r"attempt 2 · w2 at \S+Z · its lease ran out; taken over by w3", log), log
    assert re.search(r"attempt 3 · w3 at \S+Z · its lease ran out", log), log
    assert "`hypervisor reopen a --reset-attempts`" in log


def test_the_supervisors_dead_letter_logs_every_attempt_too(root):
    """The other dead letter (a supervised worker's last attempt ends without an outcome): the same history."""
    path = write_task(root, "a", status="active")
    queue = make_queue(root, config=Config(max_attempts=2))
    first = queue.claim_next("w1", task_id="a")
    queue.release("a", token=first["claim_token"], reason="worker exited 1 without an outcome")
    second = queue.claim_next("w2", task_id="a")
    queue.dead_letter("a", second["claim_token"], "worker timed out after 30 min")
    fields = front(path)
    assert fields["status"] == "blocked" and "assignee" not in fields
    log = body(path).split("**blocked**", 1)[1]
    assert re.search(r"attempt 1 · w1 at \S+Z · released: worker exited 1 without an outcome", log), log
    assert re.search(r"attempt 2 · w2 at \S+Z · worker timed out after 30 min", log), log
    assert "max_attempts is 2" in log


def test_a_takeover_says_from_whom(root):
    """Before: a takeover claim printed what any claim prints."""
    write_task(root, "a", status="active")
    claim_json(root, "a", "w3", lease="1s")
    deadline = time.monotonic() + 60
    while True:
        result = run_cli("claim", "a", "--caller", "w4", "--tasks", str(root))
        if result.returncode == 0:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("claimed a (attempt 2 of 3, 1 left; ")
    assert re.fullmatch(r"taken over from w3, whose lease expired \d+s ago", lines[1]), lines


# -- 6. exit codes and JSON on every path ---------------------------------------------------------------------------
def test_a_missing_task_root_is_exit_2_and_json_with_json(tmp_path):
    """Before: exit 1, and text on stderr only with --json."""
    missing = str(tmp_path / "nope")
    for args in (["list"], ["claim", "--caller", "w1"], ["show", "x"]):
        result = run_cli(*args, "--tasks", missing, "--json", check=2)
        answer = json.loads(result.stdout)
        assert answer["code"] == 2 and answer["error"].startswith(f"task root {missing} does not exist")
        assert result.stderr == f"hypervisor: {answer['error']}\n"


SETTINGS = {
    "broken YAML": ("tasks: [a\n", "is not valid YAML at line 2, column 1"),
    "unknown key": ("taks: x\n", "unknown key 'taks'; known keys:"),
    "bad gate": ("gate: sometimes\n", "gate: 'sometimes' is not one of off, warn, block, all"),
    "max_attempts 0": ("max_attempts: 0\n", "max_attempts: 0 is not allowed: use a whole number 1 or more"),
    "bad lease": ("lease: soon\n", f"lease: 'soon' is not a duration: {FORMS}"),
}


@pytest.mark.parametrize("case", sorted(SETTINGS))
def test_any_bad_setting_is_exit_2(tmp_path, case):
    """Before: a bad lease exited 2, but a bad gate, broken YAML, max_attempts: 0 or an unknown key exited 1."""
    text, says = SETTINGS[case]
    (tmp_path / "tasks").mkdir()
    (tmp_path / ".hypervisor.yaml").write_text(text)
    for args in (["list"], ["claim", "--caller", "w1"]):
        result = run_cli(*args, cwd=tmp_path, check=2)
        assert result.stderr.startswith(f"hypervisor: {tmp_path / '.hypervisor.yaml'}: ") and says in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr  # one line, also for PyYAML's own several
        answer = json.loads(run_cli(*args, "--json", cwd=tmp_path, check=2).stdout)
        assert answer["code"] == 2 and says in answer["error"]


def test_claim_json_with_nothing_ready_is_json_exit_3_on_both_front_ends(root):
    """Before: `claim --json` with nothing ready printed text only."""
    args = ["claim", "--caller", "w1", "--json", "--tasks", str(root)]
    expected = {"error": "nothing to claim: no task is ready (see `hypervisor preflight`)", "code": 3}
    fast = run_cli(*args, check=3)
    assert json.loads(fast.stdout) == expected
    clicked = invoke(*args)
    assert clicked.exit_code == 3 and json.loads(clicked.stdout) == expected


def test_a_refusal_with_json_is_json_exit_1(root):
    write_task(root, "a", status="done")
    result = run_cli("claim", "a", "--caller", "w1", "--json", "--tasks", str(root), check=1)
    answer = json.loads(result.stdout)
    assert answer["code"] == 1 and answer["error"].startswith("task a is done; only inbox or active")


def test_a_usage_error_with_json_is_json_exit_2(root):
    result = invoke("claim", "--json", "--bogus", "--tasks", str(root))
    assert result.exit_code == 2 and json.loads(result.stdout) == {"error": "No such option '--bogus'.", "code": 2}
    assert "claim --help' for help." in result.stderr  # click's own words stay on stderr


def test_preflight_of_ids_no_task_has_exits_3(root):
    """Before: `preflight --ids nope` exited 0. Now 3, what `run` exits with for that batch (nothing to run): it
    is a report, so nothing was refused (1); the unknown id is named."""
    write_task(root, "a", status="active")
    result = run_cli("preflight", "--ids", "nope", "--tasks", str(root), check=3)
    assert "not found: nope (no task has that id" in result.stdout
    assert result.stderr == "hypervisor: nothing to run: no task of the batch is ready\n"
    report = json.loads(run_cli("preflight", "--ids", "nope", "--json", "--tasks", str(root), check=3).stdout)
    assert report["missing"] == ["nope"] and report["ready"] == []
    run_cli("preflight", "--ids", "a,nope", "--tasks", str(root), check=0)


def test_validate_json_problems_carry_the_value_and_what_is_allowed(root):
    """Before: `value` and `allowed` were null in every problem of a file the queue left out."""
    write_task(root, "s", status="doing", priority=9)
    write_task(root, "p", priority="high")
    write_task(root, "d1", id="same")
    write_task(root, "d2", id="same")
    (root / "broken.md").write_text("---\ntitle: [x\n---\n")
    report = json.loads(run_cli("validate", "--json", "--tasks", str(root), check=1).stdout)
    found = {(p["path"], p["field"]): (p["value"], p["allowed"]) for p in report["problems"]}
    statuses = "one of inbox, active, in_progress, blocked, review, done, cancelled"
    assert found[("s.md", "status")] == ("doing", statuses)
    assert found[("s.md", "priority")] == (9, "an integer 0 to 4")
    assert found[("p.md", "priority")] == ("high", "an integer 0 (highest) to 4")
    assert found[("d1.md", "id")] == ("same", "an id no other task file under the task root has")
    assert found[("broken.md", None)][1].startswith("a UTF-8 markdown file that starts with YAML frontmatter")
    assert all(p["allowed"] for p in report["problems"])
    assert all(p["value"] is not None for p in report["problems"] if p["field"])


# -- 7. the smaller points ------------------------------------------------------------------------------------------
def test_preflight_names_blocked_tasks_blocked(root):
    """Before: `skipped other: 1  (c)` for a blocked task."""
    write_task(root, "a", status="active")
    write_task(root, "c", status="blocked")
    write_task(root, "r", status="review")
    text = run_cli("preflight", "--tasks", str(root), check=0).stdout
    assert "skipped blocked: 1  (c)\n" in text and "skipped other: 1  (r (review))\n" in text
    report = json.loads(run_cli("preflight", "--json", "--tasks", str(root), check=0).stdout)
    assert report["skipped"]["blocked"] == ["c"] and report["skipped"]["other"] == [{"id": "r", "status": "review"}]


def test_a_file_without_status_is_said_to_be_taken_as_inbox(root):
    """Before: silently inbox. Kept as inbox (every hand-written note would be refused otherwise), and said."""
    write_task(root, "plain", title="No status")
    write_task(root, "set", status="active")
    note = "task plain: status missing, treated as inbox; write `status: inbox` (or active, ...) in its frontmatter"
    listed = invoke("list", "--tasks", str(root))
    assert "plain  P2   inbox*" in listed.stdout and note in listed.stderr
    by_id = {t["id"]: t for t in json.loads(invoke("list", "--json", "--tasks", str(root)).stdout)}
    assert by_id["plain"]["status_missing"] is True and "status_missing" not in by_id["set"]
    assert f"# {note}" in run_cli("show", "plain", "--tasks", str(root), check=0).stdout
    checked = run_cli("validate", "--tasks", str(root), check=0)  # a warning alone: exit 0
    assert f"warning: {root / 'plain.md'}: {note}" in checked.stdout
    assert "2 task files checked, 0 invalid, 1 warning(s)" in checked.stderr
    report = json.loads(run_cli("validate", "--json", "--tasks", str(root), check=0).stdout)
    assert [(w["path"], w["field"]) for w in report["warnings"]] == [("plain.md", "status")]


def test_list_has_a_header_in_text_only(root):
    write_task(root, "a", status="active", project="web", title="First")
    text = invoke("list", "--tasks", str(root)).stdout.splitlines()
    assert text[0].split() == ["ID", "PRI", "STATUS", "PROJECT", "TITLE"]
    assert text[1].split() == ["a", "P2", "active", "web", "First"]
    assert [t["id"] for t in json.loads(invoke("list", "--json", "--tasks", str(root)).stdout)] == ["a"]


def test_the_top_level_help_names_backend_as_the_readme_says():
    """Before: the README said `hypervisor --help` shows --backend; it did not."""
    text = " ".join(invoke("--help").stdout.split())
    assert "--backend SPEC" in text and "--tasks DIR" in text
    assert "3 nothing to claim or run" in text
    readme = (REPO / "README.md").read_text()
    assert "hypervisor --help                                   # every command takes --backend SPEC" not in readme


def test_the_readme_documents_worker_name_and_plugin_root():
    readme = (REPO / "README.md").read_text()
    assert "`HYPERVISOR_WORKER_NAME` (its name in the run" in readme
    assert "`HYPERVISOR_PLUGIN_ROOT` (a folder holding `.claude-plugin/plugin.json`)" in readme


def test_the_validate_hint_works_when_followed(tmp_path):
    """Before: "`hypervisor validate` lists them" failed unless --tasks was added by hand."""
    root = tmp_path / "notes" / "queue"
    write_task(root, "good", status="active")
    (root / "bad.md").write_text("---\nstatus: doing\n---\n")
    listed = run_cli("list", "--tasks", str(root), cwd=tmp_path, check=0)
    step = re.search(r"`(hypervisor validate[^`]*)` lists them", listed.stderr).group(1)
    assert step == "hypervisor validate --tasks notes/queue"
    followed = run_cli(*shlex.split(step)[1:], cwd=tmp_path, check=1)
    assert "bad.md: status: 'doing'" in followed.stdout
    (tmp_path / "tasks").mkdir()  # the default root needs no --tasks
    write_task(tmp_path / "tasks", "bad", status="doing")
    assert "`hypervisor validate` lists them" in run_cli("list", cwd=tmp_path, check=0).stderr
