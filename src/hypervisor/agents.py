"""The agents `hypervisor run` can start on a claimed task: triage (built in), claude, gemini, or a command."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys

from .errors import UsageError

NAMED = ("triage", "claude", "gemini")
PLACEHOLDERS = ("task_id", "token", "task_file", "worker", "attempt", "run_id", "workdir")


class Job:
    """One attempt at one task, as an agent needs to know it."""

    def __init__(self, task_id: str, title: str, task_file: str, token: str, worker: str, attempt: int,
                 max_attempts: int, run_id: str, workdir: str) -> None:  # fmt: skip
        self.task_id = task_id
        self.title = title
        self.task_file = task_file
        self.token = token
        self.worker = worker
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.run_id = run_id
        self.workdir = workdir


class Agent:
    """How to start a worker process for a job, and how many model tokens its output says it used."""

    name = "agent"

    def check(self) -> None:
        """Raise UsageError if this agent cannot run on this machine (before anything is claimed)."""

    def argv(self, job: Job) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """Extra environment for the worker process, beyond the claim variables every agent gets."""
        return {}

    def tokens(self, log_path: str) -> int:
        """Model tokens the worker's output reports (0 when it reports none)."""
        return tokens_in_log(log_path)


class TriageAgent(Agent):
    """The built-in batch triage as a worker process: no model, deterministic, runs anywhere."""

    name = "triage"

    def argv(self, job: Job) -> list[str]:
        return [sys.executable, "-m", "hypervisor.triage_agent"]


class ClaudeAgent(Agent):
    """`claude -p` with the hypervisor plugin loaded, the worker prompt, and stream-json output (for tokens)."""

    name = "claude"

    def __init__(self, exe: str | None = None) -> None:
        self.exe = exe or os.environ.get("HYPERVISOR_CLAUDE") or shutil.which("claude")

    def check(self) -> None:
        if not self.exe or not os.access(self.exe, os.X_OK):
            raise UsageError("--agent claude: the `claude` command was not found: install Claude Code "
                             "(npm install -g @anthropic-ai/claude-code) or set HYPERVISOR_CLAUDE to its path")  # fmt: skip
        self.root = plugin_root()
        self.prompt = read_prompt(self.root, "worker.md")

    def argv(self, job: Job) -> list[str]:
        return [self.exe, "-p", self.prompt + run_section(job, "mcp__plugin_hypervisor_task_manager__claim_next_task"),
                "--output-format", "stream-json", "--verbose", "--plugin-dir", self.root,
                "--permission-mode", "bypassPermissions"]  # fmt: skip


class GeminiAgent(Agent):
    """`gemini -p --yolo` with the Gemini worker prompt; the hypervisor extension must be linked for its user."""

    name = "gemini"

    def __init__(self, exe: str | None = None) -> None:
        self.exe = exe or os.environ.get("HYPERVISOR_GEMINI") or shutil.which("gemini")

    def check(self) -> None:
        if not self.exe or not os.access(self.exe, os.X_OK):
            raise UsageError("--agent gemini: the `gemini` command was not found: install Gemini CLI "
                             "(npm install -g @google/gemini-cli) or set HYPERVISOR_GEMINI to its path")  # fmt: skip
        root = plugin_root()
        installed = os.path.join(os.path.expanduser("~"), ".gemini", "extensions", "hypervisor")
        if not os.path.isdir(installed):
            raise UsageError(f"--agent gemini: the hypervisor extension is not installed for this user "
                             f"({installed} is missing): run `gemini extensions link {os.path.join(root, 'gemini')} "
                             "--consent` once")  # fmt: skip
        self.prompt = read_prompt(root, "gemini-task-worker.md")

    def argv(self, job: Job) -> list[str]:
        return [self.exe, "--skip-trust", "--yolo", "--output-format", "stream-json",
                "-p", self.prompt + run_section(job, "mcp_task_manager_claim_next_task")]  # fmt: skip

    def env(self) -> dict[str, str]:
        # The workspace must be trusted when settings load, or the extension's hooks (the edit gate) are skipped.
        return {"GEMINI_CLI_TRUST_WORKSPACE": "true"}


class CommandAgent(Agent):
    """Any command, from a template such as `./work.sh {task_id}`: split like a shell would, run without one."""

    def __init__(self, template: str) -> None:
        try:
            self.template = shlex.split(template)
        except ValueError as error:
            raise UsageError(f"--agent {template!r}: cannot split the command: {error}") from None
        if not self.template:
            raise UsageError("--agent: give triage, claude, gemini, or a command such as './work.sh {task_id}'")
        self.name = template

    def check(self) -> None:
        exe = self.template[0]
        if os.sep not in exe and "{" not in exe and shutil.which(exe) is None:
            raise UsageError(f"--agent {self.name!r}: the command {exe!r} was not found on PATH; allowed: "
                             f"{', '.join(NAMED)}, or a command template using {{{'}, {'.join(PLACEHOLDERS)}}}")  # fmt: skip

    def argv(self, job: Job) -> list[str]:
        values = {name: str(getattr(job, name)) for name in PLACEHOLDERS}
        out = []
        for arg in self.template:
            for name, value in values.items():
                arg = arg.replace("{" + name + "}", value)
            out.append(arg)
        return out


def agent_for(spec: str) -> Agent:
    """The agent an `--agent` value names."""
    if spec == "triage":
        return TriageAgent()
    if spec == "claude":
        return ClaudeAgent()
    if spec == "gemini":
        return GeminiAgent()
    return CommandAgent(spec)


def run_section(job: Job, claim_tool: str) -> str:
    """What the worker prompt adds for a supervised run: which task, who you are, that the claim is made."""
    return (
        "\n\n## This run\n\n"
        f"TASK-ID: {job.task_id}\n"
        f"Title: {job.title}\n"
        f"Task file: {job.task_file}\n"
        f"Worker name: {job.worker}\n"
        f"Attempt: {job.attempt} of {job.max_attempts}\n\n"
        f"The hypervisor supervisor has already claimed task {job.task_id} for you. Call `{claim_tool}` with "
        f"`caller` \"{job.worker}\" and `task_id` \"{job.task_id}\": it hands you that claim and its claim_token. "
        "Work only on this task, then complete or block it.\n"
    )


def plugin_root() -> str:
    """The hypervisor plugin folder (holding .claude-plugin/): HYPERVISOR_PLUGIN_ROOT, else the checkout the package
    runs from."""
    explicit = os.environ.get("HYPERVISOR_PLUGIN_ROOT")
    candidates = [explicit] if explicit else []
    here = os.path.dirname(os.path.abspath(__file__))
    candidates += [os.path.dirname(os.path.dirname(here))]  # src/hypervisor -> the checkout
    for root in candidates:
        if os.path.isfile(os.path.join(root, ".claude-plugin", "plugin.json")):
            return root
    raise UsageError("the hypervisor plugin files were not found (.claude-plugin/plugin.json): set "
                     "HYPERVISOR_PLUGIN_ROOT to the hypervisor checkout")  # fmt: skip


def read_prompt(root: str, name: str) -> str:
    path = os.path.join(root, "prompts", name)
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().rstrip("\n")
    except OSError as error:
        raise UsageError(f"the worker prompt {path} cannot be read: {error.strerror}") from None


def tokens_in_log(path: str) -> int:
    """Tokens reported by a worker's JSON-lines output (Claude Code or Gemini CLI stream-json), 0 if none.

    The final `result` event holds the session's totals; a worker killed before it is counted from the usage of
    each assistant message it did stream."""
    per_message: dict[str, int] = {}
    total = None
    try:
        handle = open(path, encoding="utf-8", errors="replace")
    except OSError:
        return 0
    with handle:
        for line in handle:
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            kind = event.get("type")
            if kind == "result":
                found = _result_tokens(event)
                if found is not None:
                    total = (total or 0) + found
            elif kind == "assistant" and isinstance(event.get("message"), dict):
                message = event["message"]
                used = _usage_tokens(message.get("usage"))
                if used is not None:
                    per_message[str(message.get("id") or len(per_message))] = used
    return total if total is not None else sum(per_message.values())


def _result_tokens(event: dict) -> int | None:
    stats = event.get("stats")
    if isinstance(stats, dict) and isinstance(stats.get("total_tokens"), int):
        return stats["total_tokens"]  # Gemini CLI
    return _usage_tokens(event.get("usage"))  # Claude Code


def _usage_tokens(usage: object) -> int | None:
    if not isinstance(usage, dict):
        return None
    fields = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    values = [usage.get(name) for name in fields]
    numbers = [value for value in values if isinstance(value, int) and not isinstance(value, bool)]
    return sum(numbers) if numbers else None
