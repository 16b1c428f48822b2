"""Every refusal of the claim lifecycle, made for real through the CLI (a subprocess) and the MCP server (the
official SDK's client over stdio), and the advice in its text followed: each step it names is accepted (issue 14,
point 3: "every refusal names a step that works").

A refusal names its steps one way (claims/advice.py): a command in backticks, the same step as an MCP call in
parentheses after it, and "from <time>" before a step that has to wait. `steps` reads them out of the text, and each
alternative is followed on a fresh copy of the situation that produced it (a task of its own). Advice that is not a
command ("use the token your claim returned", "write e.g. 90s") is followed by each case's `also`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, make_queue, run_cli, write_task
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from test_mcp_server import error_text, structured

from hypervisor.core.config import load_config
from hypervisor.core.timeutil import now, parse_iso
from hypervisor.frontends.mcp_server import dispatch_update
from hypervisor.tasks import taskfile

LEASE = (
    3  # seconds, `lease:` in the projects' .hypervisor.yaml: a stranded task is claimable this long after it changed
)
CALLER = "w9"
FILL = {"NAME": CALLER, "S": "did the work", "R": "waits on the vault key"}  # what the placeholders stand for
NO_TOKEN = "0" * 32
HANG_GUARD = 60.0  # seconds: how long a poll may wait before the test fails, never a claim about speed


# -- reading the advice --------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One step a refusal names: a command (argv after `hypervisor`), its MCP call, and the moment it waits for."""

    cli: list[str] | None = None
    tool: str | None = None
    args: dict = field(default_factory=dict)
    wants: tuple[str, ...] = ()  # what the MCP call needs from the caller: claim_token, summary, reason
    after: float | None = None

    @property
    def name(self) -> str:
        """'claim a', 'claim' (another task), 'reopen a --reset-attempts', 'update_task active'; '@' if timed."""
        if self.cli:
            words = [self.cli[0]] + [w for w in self.cli[1:2] if not w.startswith("-")]
            words += [w for w in self.cli if w == "--reset-attempts"]
        else:
            words = [self.tool or "", *self.args.get("status", "").split()]
        return ("@" if self.after else "") + " ".join(words)


STEP = re.compile(
    r"`hypervisor (?P<cli>[^`]+)`|MCP: (?P<tool>[a-z_]+)(?P<rest>[^)]*)|\bfrom (?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"
)


def steps(text: str) -> list[Step]:
    """The steps named in a refusal, in order; an MCP call right after a command is that command's MCP form."""
    found: list[Step] = []
    after, last_end = None, -10
    for match in STEP.finditer(text):
        if match["at"]:
            after = parse_iso(match["at"])
            continue
        if match["cli"]:
            found.append(Step(cli=shlex.split(match["cli"]), after=after))
        else:
            rest = match["rest"]
            args = dict(re.findall(r"(\w+) '([^']*)'", rest)) if rest.startswith(" with ") else {}
            wants = tuple(word for word in ("claim_token", "summary", "reason") if word in rest)
            if found and found[-1].tool is None and match.start() - last_end <= 3:
                found[-1].tool, found[-1].args, found[-1].wants = match["tool"], args, wants
            else:
                found.append(Step(tool=match["tool"], args=args, wants=wants, after=after))
        after, last_end = None, match.end()
    return found


def wait_for(moment: float | None) -> None:
    """Poll the clock until the moment a step names has come."""
    while moment is not None and now() < moment:
        time.sleep(0.01)


async def wait_for_async(moment: float | None) -> None:
    while moment is not None and now() < moment:
        await asyncio.sleep(0.01)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- a project with a short lease -----------------------------------------------------------------------------------
class Project:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = path / "tasks"
        self.root.mkdir(parents=True)
        (path / ".hypervisor.yaml").write_text(f"tasks: tasks\nlease: {LEASE}s\n")
        self.queue = make_queue(self.root, "file", load_config(str(path / ".hypervisor.yaml")))

    def task(self, task_id: str, **fields) -> Path:
        return write_task(self.root, task_id, title=task_id, **fields)

    def claim(self, task_id: str, caller: str = "w1", lease: float = 600) -> str:
        return self.queue.claim_next(caller, task_id=task_id, lease_seconds=lease)["claim_token"]

    def cli(self, *args: str):
        return run_cli(*args, cwd=self.path)

    def fields(self, task_id: str) -> dict:
        return taskfile.read_doc(str(self.root / f"{task_id}.md")).data

    def edit(self, task_id: str, old: str, new: str) -> None:
        """What an editor does: write the file back with one line changed."""
        path = self.root / f"{task_id}.md"
        text = path.read_text()
        assert old in text, text
        path.write_text(text.replace(old, new))


# -- the situations -------------------------------------------------------------------------------------------------
def active(p: Project, tid: str) -> dict:
    p.task(tid, status="active")
    return {}


def claimed(p: Project, tid: str) -> dict:
    p.task(tid, status="active")
    return {"token": p.claim(tid)}


def stranded(p: Project, tid: str) -> dict:
    """in_progress with no claim: the record is gone (as after a Redis restart); test_stranded makes each for real."""
    token = claimed(p, tid)["token"]
    assert p.queue.claims.drop(tid, token)
    return {"token": token}


def by_hand(p: Project, tid: str) -> dict:
    p.task(tid, status="in_progress", assignee="ann")
    return {}


def with_status(status: str) -> Callable[[Project, str], dict]:
    def setup(p: Project, tid: str) -> dict:
        p.task(tid, status=status)
        return {}

    return setup


def finished(status: str) -> Callable[[Project, str], dict]:
    """A task its holder really took to `status`; the token it held is kept."""

    def setup(p: Project, tid: str) -> dict:
        token = claimed(p, tid)["token"]
        if status == "done":
            p.queue.complete(tid, token=token, summary="ok")
        elif status == "blocked":
            p.queue.block(tid, token=token, reason="needs a key")
        else:
            dispatch_update(p.queue, tid, token=token, status=status)
        assert p.fields(tid)["status"] == status and p.queue.read_claim(tid) is None
        return {"token": token}

    return setup


def taken_over(p: Project, tid: str) -> dict:
    p.task(tid, status="active")
    old = p.claim(tid, lease=0.05)
    wait_until(lambda: p.queue.read_claim(tid).expired(now()), "the first lease to run out")
    p.claim(tid, caller="w2")
    return {"token": old}


def waiting_on_active(p: Project, tid: str) -> dict:
    p.task(f"{tid}-dep", status="active")
    p.task(tid, status="active", depends_on=[f"{tid}-dep"])
    return {}


def waiting_on_missing(p: Project, tid: str) -> dict:
    p.task(tid, status="active", depends_on=[f"{tid}-gone"])
    return {}


def tried_three_times(p: Project, tid: str) -> dict:
    """Three claims released unfinished: the next claim finds it over max_attempts (3) and dead-letters it."""
    p.task(tid, status="active")
    for caller in ("w1", "w2", "w3"):
        p.queue.release(tid, token=p.claim(tid, caller))
    assert p.fields(tid)["attempts"] == 3
    return {}


def claimed_briefly(p: Project, tid: str) -> dict:
    """Claimed under a lease short enough to wait out (long enough for the refusal to come first)."""
    p.task(tid, status="active")
    return {"token": p.claim(tid, lease=LEASE + 1)}


def edited_to(status: str) -> Callable[[Project, str], dict]:
    """A live claim whose file an editor set to `status`."""

    def setup(p: Project, tid: str) -> dict:
        ctx = claimed(p, tid)
        p.edit(tid, "status: in_progress", f"status: {status}")
        return ctx

    return setup


# -- following advice that is not a command --------------------------------------------------------------------------
def cli_ok(p: Project, *args: str) -> None:
    result = p.cli(*args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)


def finish_dependency(p: Project, tid: str, ctx: dict) -> None:
    p.queue.complete(f"{tid}-dep", token=p.claim(f"{tid}-dep"), summary="ok")


def create_dependency(p: Project, tid: str, ctx: dict) -> None:
    p.task(f"{tid}-gone", status="done")


def then_claimable(p: Project, tid: str, ctx: dict) -> None:
    p.queue.complete(tid, token=p.claim(tid, caller="w5"), summary="done after all")


@dataclass
class Case:
    name: str
    setup: Callable[[Project, str], dict]
    says: str
    expect: list[str]  # the steps' names, {id} for the task
    cli: list[str] | None = None
    mcp: tuple[str, dict] | None = None
    code: int = 1
    also_cli: Callable[[Project, str, dict], None] | None = None  # following advice that names no command
    also_mcp: tuple[str, dict] | None = None  # the same through the MCP server
    after: Callable[[Project, str, dict], None] | None = None  # what must work once the task's step was followed
    sequences: list[list[int]] | None = None  # steps followed together, in order (default: each on its own)


CLAIM = ["claim", "{id}", "--caller", CALLER]
CLAIM_MCP = ("claim_next_task", {"caller": CALLER, "task_id": "{id}"})
UNFINISHED = ("done", "blocked", "review", "cancelled")

# fmt: off
CASES = [
    Case("already-claimed", claimed, "already claimed by w1", ["claim"], CLAIM, CLAIM_MCP),
    *[Case(f"unclaimable-{s}", with_status(s), f"is {s}; only inbox or active", ["reopen {id}", "claim"], CLAIM,
           CLAIM_MCP, after=then_claimable) for s in UNFINISHED],
    Case("stranded-not-yet", stranded, "no claim holds it (stranded", ["@claim {id}", "reopen {id}", "claim"],
         CLAIM, CLAIM_MCP),
    Case("set-in-progress-by-hand", by_hand, "set in_progress by hand", ["reopen {id}", "claim"], CLAIM, CLAIM_MCP,
         after=then_claimable),
    Case("no-claim-active", active, "is not claimed (it is active)", ["claim {id}"],
         ["complete", "{id}", "--token", NO_TOKEN, "--summary", "x"],
         ("complete_task", {"id": "{id}", "claim_token": NO_TOKEN, "summary": "x"})),
    Case("no-claim-stranded", stranded, "its file says in_progress, but no claim holds it",
         ["@claim {id}", "reopen {id}"], ["renew", "{id}", "--token", "{token}"],
         ("release_task", {"id": "{id}", "claim_token": "{token}"})),
    Case("no-claim-by-hand", by_hand, "claim lost: task {id} was set in_progress by hand", ["reopen {id}"],
         ["complete", "{id}", "--caller", "ann", "--summary", "x"],
         ("complete_task", {"id": "{id}", "caller": "ann", "summary": "x"}), after=then_claimable),
    *[Case(f"no-claim-{s}", finished(s), f"is {s} and no claim holds it", ["reopen {id}"],
           ["release", "{id}", "--token", "{token}"], ("release_task", {"id": "{id}", "claim_token": "{token}"}),
           after=then_claimable) for s in UNFINISHED],
    Case("held-by-other-caller", claimed, "is claimed by w1, not by w9", ["claim"],
         ["complete", "{id}", "--caller", CALLER, "--summary", "x"],
         ("update_task", {"id": "{id}", "caller": CALLER, "status": "active"})),
    Case("token-mismatch", claimed, "does not match the live claim", ["claim"], ["renew", "{id}", "--token", NO_TOKEN],
         ("release_task", {"id": "{id}", "claim_token": NO_TOKEN}),
         also_cli=lambda p, tid, ctx: cli_ok(p, "renew", tid, "--token", ctx["token"]),
         also_mcp=("release_task", {"id": "{id}", "claim_token": "{token}"})),
    Case("lease-expired-and-taken-over", taken_over, "claim lost: lease expired", ["claim"],
         ["complete", "{id}", "--token", "{token}", "--summary", "x"],
         ("complete_task", {"id": "{id}", "claim_token": "{token}", "summary": "x"})),
    Case("dependencies-unfinished", waiting_on_active, "waits on unfinished dependencies: {id}-dep (active)",
         ["claim"], CLAIM, CLAIM_MCP, also_cli=finish_dependency, after=then_claimable),
    Case("dependency-missing", waiting_on_missing, "{id}-gone (missing); finish those first (a missing one: create it",
         ["claim"], CLAIM, CLAIM_MCP, also_cli=create_dependency, after=then_claimable),
    Case("dead-lettered-at-claim", tried_three_times, "failed 3 attempts (max_attempts 3) and was moved to blocked",
         ["claim", "reopen {id} --reset-attempts"], CLAIM, CLAIM_MCP, after=then_claimable),
    Case("reopen-while-claimed", claimed_briefly, "so it is not reopened", ["release {id}", "@reopen {id}"],
         ["reopen", "{id}"], after=then_claimable),
    Case("reopen-active", active, "is active, already in the queue", ["claim {id}"], ["reopen", "{id}"]),
    Case("reopen-inbox", with_status("inbox"), "is inbox, already in the queue", ["claim {id}"], ["reopen", "{id}"]),
    Case("reopen-waiting", waiting_on_active, "nothing to reopen; it waits on unfinished dependencies", ["claim"],
         ["reopen", "{id}"]),
    Case("nothing-to-claim", active, "nothing to claim in project nowhere", ["preflight"],
         ["claim", "--caller", CALLER, "--project", "nowhere"],
         ("claim_next_task", {"caller": CALLER, "project": "nowhere"}), code=3),
    Case("unknown-id", active, "no task with id '{id}-nope'", ["list"], ["claim", "{id}-nope", "--caller", CALLER],
         ("get_task", {"id": "{id}-nope"})),
    Case("invalid-id", active, "is not allowed: an id is", ["list"], ["claim", "../{id}", "--caller", CALLER],
         ("get_task", {"id": "../{id}"})),
    Case("renew-ended-by-file-done", edited_to("done"), "claim ended: task {id} was marked done in its file",
         ["reopen {id}"], ["renew", "{id}", "--token", "{token}"],
         ("block_task", {"id": "{id}", "claim_token": "{token}", "reason": "x"}), after=then_claimable),
    Case("complete-ended-by-file-cancelled", edited_to("cancelled"), "was marked cancelled in its file",
         ["reopen {id}"], ["complete", "{id}", "--token", "{token}", "--summary", "x"],
         ("complete_task", {"id": "{id}", "claim_token": "{token}", "summary": "x"}), after=then_claimable),
    Case("no-token-or-caller", claimed, "give the claim token your claim returned (--token TOKEN", [],
         ["complete", "{id}", "--summary", "x"], ("complete_task", {"id": "{id}", "summary": "x"}), code=2,
         also_cli=lambda p, tid, ctx: cli_ok(p, "complete", tid, "--summary", "x", "--token", ctx["token"]),
         also_mcp=("complete_task", {"id": "{id}", "summary": "x", "claim_token": "{token}"})),
    Case("bad-caller", active, "caller is 300 characters, too long: One line of at most 200 characters", [],
         ["claim", "{id}", "--caller", "x" * 300], ("claim_next_task", {"caller": "x" * 300, "task_id": "{id}"}),
         code=2, also_cli=lambda p, tid, ctx: cli_ok(p, "claim", tid, "--caller", CALLER), also_mcp=CLAIM_MCP),
    Case("bad-lease", active, "is not a duration: write one of 90s", [], [*CLAIM, "--lease", "soon"], code=2,
         also_cli=lambda p, tid, ctx: cli_ok(p, "claim", tid, "--caller", CALLER, "--lease", "90s")),
    Case("bad-reopen-reason", with_status("blocked"), "must be 1 to 2000 characters", [],
         ["reopen", "{id}", "--reason", " "], ("update_task", {"id": "{id}", "status": "active", "note": "  "}),
         code=2, also_cli=lambda p, tid, ctx: cli_ok(p, "reopen", tid, "--reason", "the key is in the vault"),
         also_mcp=("update_task", {"id": "{id}", "status": "active", "note": "the key is in the vault"})),
    # update_task only
    Case("update-done-holding-the-claim", claimed, "update_task does not set done", ["complete {id}", "claim {id}"],
         mcp=("update_task", {"id": "{id}", "claim_token": "{token}", "status": "done"}), sequences=[[0]]),
    Case("update-blocked-without-a-claim", active, "update_task does not set blocked", ["block {id}", "claim {id}"],
         mcp=("update_task", {"id": "{id}", "caller": CALLER, "status": "blocked"}), sequences=[[1, 0]]),
    Case("update-bad-transition", finished("done"), "is done and cannot become review", ["update_task active"],
         mcp=("update_task", {"id": "{id}", "caller": CALLER, "status": "review"})),
    Case("update-in-progress-without-caller", active, "name the caller to claim it", [],
         mcp=("update_task", {"id": "{id}", "status": "in_progress"}),
         also_mcp=("update_task", {"id": "{id}", "caller": CALLER, "status": "in_progress"})),
]
# fmt: on


def fill(value, tid: str, ctx: dict):
    """A case's argv or arguments for task `tid`."""
    if isinstance(value, dict):
        return {key: fill(item, tid, ctx) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, tid, ctx) for item in value]
    return value.format(id=tid, token=ctx.get("token", "")) if isinstance(value, str) else value


def check_text(case: Case, text: str, tid: str) -> list[Step]:
    assert case.says.format(id=tid) in text, text
    assert len(text) < 600, f"a refusal to read at a glance, not {len(text)} characters: {text}"
    found = steps(text)
    assert [s.name for s in found] == [name.format(id=tid) for name in case.expect], text
    for step in found:
        named = [*(step.cli or [])[1:2], step.args.get("id"), step.args.get("task_id")]
        assert all(n in (None, tid) or n.startswith("-") for n in named), f"a step for another task: {text}"
    return found


def sequences_for(case: Case) -> list[list[int]]:
    """The steps followed, each list on a fresh copy of the situation: by default each step alone."""
    return case.sequences or [[index] for index in range(len(case.expect))]


@dataclass
class Pending:
    """A refusal made for one alternative, waiting to be followed: its task, its context, its steps."""

    case: Case
    tid: str
    ctx: dict
    found: list[Step]
    sequence: list[int] | None  # None: the case's `also` is followed instead

    @property
    def order(self) -> tuple[bool, float]:
        """Followed in the order of the moments the steps name; "claim another task" last, since it may take any
        ready task, a pending one too."""
        first = self.found[self.sequence[0]] if self.sequence else Step()
        return first.name in ("claim", "claim_next_task"), first.after or 0.0


# -- the CLI ------------------------------------------------------------------------------------------------------
def cli_refusal(p: Project, case: Case, tid: str) -> tuple[dict, str]:
    ctx = case.setup(p, tid)
    p.task(f"{tid}-spare", status="active", priority=4)  # "claim another task" always finds one
    result = p.cli(*fill(case.cli, tid, ctx))
    assert result.returncode == case.code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("hypervisor: ") and result.stderr.count("\n") == 1, result.stderr
    return ctx, result.stderr[len("hypervisor: ") :].strip()


def follow_cli(p: Project, step: Step, ctx: dict) -> None:
    wait_for(step.after)
    cli_ok(p, *[{**FILL, "TOKEN": ctx.get("token", "")}.get(word, word) for word in step.cli])


def cli_cases(p: Project, cases: list[Case]) -> None:
    """Make every alternative's refusal first, then follow them in the order of the moments they name (so the
    waits for "from <time>" overlap)."""
    pending = []
    for case in cases:
        for number, sequence in enumerate(sequences_for(case)):
            tid = f"{case.name}-{number}"
            ctx, text = cli_refusal(p, case, tid)
            pending.append(Pending(case, tid, ctx, check_text(case, text, tid), sequence))
        if case.also_cli:
            tid = f"{case.name}-also"
            ctx, text = cli_refusal(p, case, tid)
            pending.append(Pending(case, tid, ctx, check_text(case, text, tid), None))
        assert case.expect or case.also_cli, f"{case.name}: no step to take"
    for item in sorted(pending, key=lambda item: item.order):
        case, tid, ctx = item.case, item.tid, item.ctx
        if item.sequence is None:
            case.also_cli(p, tid, ctx)
        else:
            for index in item.sequence:
                follow_cli(p, item.found[index], ctx)
        last = item.found[item.sequence[-1]].cli if item.sequence else [None, tid]
        if case.after and last[1:2] == [tid]:
            case.after(p, tid, ctx)


TIMED = [c for c in CASES if c.cli and any(name.startswith("@") for name in c.expect)]


@pytest.mark.parametrize("case", [c for c in CASES if c.cli and c not in TIMED], ids=lambda c: c.name)
def test_each_cli_refusal_names_steps_that_are_accepted(tmp_path, case):
    cli_cases(Project(tmp_path / "project"), [case])


def test_cli_refusals_that_name_a_moment_are_accepted_from_that_moment(tmp_path):
    assert {c.name for c in TIMED} == {"stranded-not-yet", "no-claim-stranded", "reopen-while-claimed"}
    cli_cases(Project(tmp_path / "project"), TIMED)


def test_a_missing_task_root_names_init_which_makes_one(tmp_path):
    refused = run_cli("claim", "--caller", CALLER, cwd=tmp_path)
    assert refused.returncode == 2 and "does not exist" in refused.stderr  # a setting to fix: exit 2
    (init,) = [s for s in steps(refused.stderr) if s.cli == ["init"]]
    assert run_cli(*init.cli, cwd=tmp_path).returncode == 0
    write_task(tmp_path / "tasks", "a", status="active")
    run_cli("claim", "--caller", CALLER, cwd=tmp_path, check=0)


# -- the MCP server -----------------------------------------------------------------------------------------------
def server_params(p: Project, **env: str) -> StdioServerParameters:
    """The real server, started as .mcp.json starts it, in the project folder (its .hypervisor.yaml applies)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HYPERVISOR_")}
    return StdioServerParameters(command=sys.executable, args=[str(REPO / "scripts" / "launch.py"), "mcp"],
                                 env={**clean, **env}, cwd=str(p.path))  # fmt: skip


async def mcp_refusal(client: Client, p: Project, case: Case, tid: str) -> tuple[dict, str]:
    ctx = case.setup(p, tid)
    tool, args = case.mcp
    return ctx, error_text(await client.call_tool(tool, fill(args, tid, ctx)))


async def follow_mcp(client: Client, p: Project, step: Step, ctx: dict) -> dict:
    await wait_for_async(step.after)
    args = dict(step.args)
    if step.tool in ("claim_next_task", "update_task"):
        args.setdefault("caller", CALLER)
        if step.tool == "claim_next_task" and not args.get("task_id"):
            p.task(f"spare-{time.monotonic_ns()}", status="active", priority=0)  # "claim another task" finds one
    extra = {"claim_token": ctx.get("token"), "summary": FILL["S"], "reason": FILL["R"]}
    args.update({key: extra[key] for key in step.wants})
    answer = structured(await client.call_tool(step.tool, args))
    if "claim_token" in answer:
        ctx["token"] = answer["claim_token"]  # a later step of the same sequence works under this claim
    return answer


async def mcp_cases(p: Project) -> None:
    """As cli_cases, through the MCP server: each alternative whose step has an MCP form is followed by that call."""
    async with Client(server_params(p)) as client:
        pending = []
        for case in (c for c in CASES if c.mcp):
            for number, sequence in enumerate(sequences_for(case)):
                tid = f"{case.name}-{number}"
                ctx, text = await mcp_refusal(client, p, case, tid)
                found = check_text(case, text, tid)
                if case.code == 3:
                    assert "Stop: there is no work for you" in text and not [s for s in found if s.tool], text
                elif all(found[index].tool for index in sequence):
                    pending.append(Pending(case, tid, ctx, found, sequence))
            if case.also_mcp:
                tid = f"{case.name}-also"
                ctx, text = await mcp_refusal(client, p, case, tid)
                pending.append(Pending(case, tid, ctx, check_text(case, text, tid), None))
            assert case.code == 3 or any(item.case is case for item in pending), f"{case.name}: no call to make"
        for item in sorted(pending, key=lambda item: item.order):
            if item.sequence is None:
                tool, args = item.case.also_mcp
                structured(await client.call_tool(tool, fill(args, item.tid, item.ctx)))
            for index in item.sequence or ():
                await follow_mcp(client, p, item.found[index], item.ctx)


def test_each_mcp_refusal_names_tool_calls_that_are_accepted(tmp_path):
    asyncio.run(mcp_cases(Project(tmp_path / "project")))


async def supervised_cases(p: Project, token: str) -> None:
    env = {"HYPERVISOR_TASK_ID": "mine", "HYPERVISOR_CLAIM_TOKEN": token, "HYPERVISOR_WORKER": "1"}
    async with Client(server_params(p, **env)) as client:
        other = error_text(await client.call_tool("claim_next_task", {"caller": "model", "task_id": "other"}))
        assert "started by the hypervisor supervisor for task mine" in other
        (step,) = steps(other)
        handed = await follow_mcp(client, p, step, {})
        assert handed["id"] == "mine" and handed["claim_token"] == token
        p.queue.complete("mine", token=token, summary="the supervisor's worker finished")
        lost = error_text(await client.call_tool("claim_next_task", {"caller": "model"}))
        assert "claim lost: task mine has no live claim (it is done); stop" in lost and steps(lost) == []
        refused = await client.call_tool("claim_next_task", {"caller": "model", "task_id": "other"})
        assert refused.is_error, "stop is all that is left: no other task may be claimed"


def test_a_supervised_worker_is_told_to_work_on_its_own_task_and_to_stop_once_it_is_over(tmp_path):
    p = Project(tmp_path / "project")
    p.task("mine", status="active")
    p.task("other", status="active")
    asyncio.run(supervised_cases(p, p.claim("mine", caller="supervisor")))


def stopped_descendant() -> int | None:
    """The pid of a process below this one that stopped itself (SIGSTOP at a pause point), every thread of it."""
    parent, state = {}, {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            state[int(name)], parent[int(name)] = fields[0], int(fields[1])
    for pid in (pid for pid, code in state.items() if code == "T"):
        ancestor = parent.get(pid)
        while ancestor not in (None, 0, 1, os.getpid()):
            ancestor = parent.get(ancestor)
        if ancestor == os.getpid() and all_threads_stopped(pid):
            return pid
    return None


def all_threads_stopped(pid: int) -> bool:
    try:
        threads = os.listdir(f"/proc/{pid}/task")
        return all(Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for t in threads)
    except OSError:
        return False


async def claimed_meanwhile(p: Project) -> None:
    async with Client(server_params(p, HYPERVISOR_PAUSE="update-read")) as client:
        update = asyncio.create_task(client.call_tool("update_task", {"id": "a", "caller": CALLER, "note": "hi"}))
        deadline = time.monotonic() + HANG_GUARD
        while (server := stopped_descendant()) is None:
            assert time.monotonic() < deadline and not update.done(), "the server never reached the pause point"
            await asyncio.sleep(0.01)
        p.cli("claim", "a", "--caller", "w1", "--lease", "10m").check_returncode()
        os.kill(server, signal.SIGCONT)
        text = error_text(await update)
        assert "task a was claimed meanwhile by w1" in text
        assert [s.name for s in steps(text)] == ["claim"]
        assert (await follow_mcp(client, p, steps(text)[0], {}))["status"] == "in_progress"


def test_an_update_that_lost_a_race_to_a_claim_names_a_step_that_works(tmp_path):
    p = Project(tmp_path / "project")
    p.task("a", status="active")
    asyncio.run(claimed_meanwhile(p))
