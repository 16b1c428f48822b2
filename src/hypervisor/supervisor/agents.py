"""The agents `hypervisor run` can start on a claimed task: triage (built in), claude, gemini, or a command."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys

from ..core import rules
from ..core.errors import UsageError

NAMED = ("triage", "claude", "gemini")
PLACEHOLDERS = ("task_id", "token", "task_file", "worker", "attempt", "run_id", "workdir")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")  # {name}; other braces (JSON, shell) are literal


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

    def check(self, workdir: str | None = None) -> None:
        """Raise UsageError if this agent cannot run on this machine (before anything is claimed); `workdir` is
        where its workers start."""

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
        return [sys.executable, "-m", "hypervisor.triage.agent"]


class CliAgent(Agent):
    """An agent that is a coding CLI installed from npm: its binary from `env_var`, else from PATH."""

    product = binary = package = env_var = ""

    def __init__(self, exe: str | None = None) -> None:
        self.exe = exe or os.environ.get(self.env_var) or shutil.which(self.binary)

    def check_binary(self) -> None:
        if not self.exe or not os.access(self.exe, os.X_OK):
            raise UsageError(f"--agent {self.name}: the `{self.binary}` command was not found: install {self.product} "
                             f"(npm install -g {self.package}) or set {self.env_var} to its path")  # fmt: skip


class ClaudeAgent(CliAgent):
    """`claude -p` with the hypervisor plugin loaded, the worker prompt, and stream-json output (for tokens)."""

    name = binary = "claude"
    product, package, env_var = "Claude Code", "@anthropic-ai/claude-code", "HYPERVISOR_CLAUDE"

    def check(self, workdir: str | None = None) -> None:
        self.check_binary()
        self.root = plugin_root()
        self.prompt = read_prompt(self.root, "worker.md")

    def argv(self, job: Job) -> list[str]:
        claim = rules.mcp_tool_name("claude", rules.MCP_CLAIM_TOOL)
        return [self.exe, "-p", self.prompt + run_section(job, claim), "--output-format", "stream-json", "--verbose",
                "--plugin-dir", self.root, "--permission-mode", "bypassPermissions"]  # fmt: skip


class GeminiAgent(CliAgent):
    """`gemini -p --yolo` with the Gemini worker prompt; the hypervisor extension must be linked for its user."""

    name = binary = "gemini"
    product, package, env_var = "Gemini CLI", "@google/gemini-cli", "HYPERVISOR_GEMINI"

    def check(self, workdir: str | None = None) -> None:
        self.check_binary()
        root = gemini_extension_root()
        self.prompt = read_prompt(root, "gemini-task-worker.md")

    def argv(self, job: Job) -> list[str]:
        return [self.exe, "--skip-trust", "--yolo", "--output-format", "stream-json",
                "-p", self.prompt + run_section(job, rules.mcp_tool_name("gemini", rules.MCP_CLAIM_TOOL))]  # fmt: skip

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

    def check(self, workdir: str | None = None) -> None:
        """Refuse, before anything is claimed, a template with an unknown placeholder and a command that cannot
        start: a name not on PATH, or a path (relative to `workdir`, where workers start) that is missing, a
        folder, or not executable."""
        unknown = sorted({name for arg in self.template for name in PLACEHOLDER.findall(arg)} - set(PLACEHOLDERS))
        if unknown:
            raise UsageError(f"--agent {self.name!r}: unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; "
                             f"allowed: {self.allowed()}")  # fmt: skip
        exe = self.template[0]
        if PLACEHOLDER.search(exe):
            return  # the program itself comes from the task (e.g. {task_file}): only known when it starts
        if os.sep not in exe:
            if shutil.which(exe) is None:
                raise UsageError(f"--agent {self.name!r}: the command {exe!r} was not found on PATH; install it, give "
                                 f"its path (such as ./{exe}), or use one of {', '.join(NAMED)}")  # fmt: skip
            return
        path = os.path.join(workdir or os.getcwd(), exe)
        shown = f"{exe!r}" + ("" if os.path.isabs(exe) else f" ({os.path.normpath(path)})")
        if not os.path.exists(path):
            tilde = " (no shell runs it, so ~ is not expanded)" if exe.startswith("~") else ""
            raise UsageError(f"--agent {self.name!r}: the program {shown} does not exist{tilde}; give the path of an "
                             f"executable file (a relative path starts from {workdir or os.getcwd()}, where workers "
                             "start), or a command on PATH")  # fmt: skip
        if os.path.isdir(path):
            raise UsageError(f"--agent {self.name!r}: the program {shown} is a folder, not an executable file")
        if not os.access(path, os.X_OK):
            raise UsageError(f"--agent {self.name!r}: the program {shown} is not executable: run `chmod +x "
                             f"{os.path.normpath(path)}`, or start it through its interpreter, such as "
                             f"--agent 'sh {exe} {{task_id}}'")  # fmt: skip

    @staticmethod
    def allowed() -> str:
        return " ".join("{" + name + "}" for name in PLACEHOLDERS)

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
        f'`caller` "{job.worker}" and `task_id` "{job.task_id}": it hands you that claim and its claim_token. '
        "Work only on this task, then complete or block it.\n"
    )


# Where the plugin comes from, for the one-line "how to get it" messages.
SOURCE = "<hypervisor git URL or clone>"
GET_CLAUDE = f"`claude plugin marketplace add {SOURCE}` then `claude plugin install hypervisor@hypervisor`"
GET_GEMINI = f"`git clone {SOURCE} ~/hypervisor` then `cd ~/hypervisor && gemini extensions link gemini --consent`"
PLUGIN_KEY = "hypervisor@hypervisor"  # <plugin>@<marketplace> in Claude Code's installed_plugins.json


def plugin_root() -> str:
    """The hypervisor plugin folder (holding .claude-plugin/plugin.json and prompts/), looked up where users put it:
    HYPERVISOR_PLUGIN_ROOT; the checkout this package runs from; the Claude Code plugin install
    (~/.claude/plugins/installed_plugins.json: `claude plugin install hypervisor@hypervisor`); the clone the Gemini
    extension is linked from (`gemini extensions link <clone>/gemini`). Else a UsageError saying how to get it."""
    explicit = os.environ.get("HYPERVISOR_PLUGIN_ROOT")
    if explicit:
        if is_plugin_root(explicit):
            return os.path.abspath(explicit)
        raise UsageError(f"HYPERVISOR_PLUGIN_ROOT={explicit} holds no .claude-plugin/plugin.json: point it at a "
                         "hypervisor clone, or unset it")  # fmt: skip
    for root in (checkout_root(), claude_installed_root(), gemini_linked_root()):
        if root:
            return root
    raise UsageError(f"the hypervisor plugin files were not found: install the Claude Code plugin "
                     f"({GET_CLAUDE}), or link the Gemini extension ({GET_GEMINI}), or set HYPERVISOR_PLUGIN_ROOT "
                     "to a clone")  # fmt: skip


def is_plugin_root(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ".claude-plugin", "plugin.json"))


def checkout_root() -> str | None:
    """The repository this package runs from (src/hypervisor/supervisor -> the checkout), None for an installed package."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    return root if is_plugin_root(root) else None


def claude_installed_root() -> str | None:
    """The installPath Claude Code recorded for the hypervisor plugin (`claude plugin install
    hypervisor@hypervisor` copies it to ~/.claude/plugins/cache/<marketplace>/hypervisor/<version>/), None if
    there is none on disk. An install for the current project comes first, then the user's, newest first."""
    config = os.environ.get("CLAUDE_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".claude")
    data = _read_json(os.path.join(config, "plugins", "installed_plugins.json"))
    plugins = data.get("plugins") if isinstance(data, dict) else None
    if not isinstance(plugins, dict):
        return None
    cwd = os.path.abspath(os.getcwd()) + os.sep
    found = []
    for key, entries in plugins.items():
        if not isinstance(key, str) or key.split("@", 1)[0] != "hypervisor":
            continue
        for entry in entries if isinstance(entries, list) else [entries]:
            if isinstance(entry, dict) and isinstance(entry.get("installPath"), str):
                found.append((key, entry))
    found.sort(key=lambda item: str(item[1].get("lastUpdated") or ""), reverse=True)  # newest first, then:

    def rank(item: tuple) -> tuple:
        key, entry = item
        project = entry.get("projectPath")
        here = isinstance(project, str) and cwd.startswith(os.path.join(os.path.abspath(project), ""))
        return (key != PLUGIN_KEY, 0 if here else 1 if entry.get("scope") == "user" else 2)

    for _, entry in sorted(found, key=rank):
        if is_plugin_root(entry["installPath"]):
            return os.path.abspath(entry["installPath"])
    return None


def gemini_extension_dir() -> str:
    """Where Gemini CLI keeps the hypervisor extension for this user (GEMINI_CLI_HOME replaces HOME there)."""
    home = os.environ.get("GEMINI_CLI_HOME") or os.path.expanduser("~")
    return os.path.join(home, ".gemini", "extensions", "hypervisor")


def gemini_linked_root() -> str | None:
    """The clone the hypervisor Gemini extension is linked from (its gemini/ folder's parent), None if it is not
    linked or that clone is gone."""
    meta = _read_json(os.path.join(gemini_extension_dir(), ".gemini-extension-install.json"))
    if not isinstance(meta, dict) or meta.get("type") != "link" or not isinstance(meta.get("source"), str):
        return None
    root = os.path.dirname(os.path.abspath(meta["source"]))
    return root if is_plugin_root(root) else None


def gemini_extension_root() -> str:
    """The plugin folder behind this user's hypervisor Gemini extension, checked so that its hooks and MCP server
    (reached as `${extensionPath}/../hooks` and `../scripts`) will start; else a UsageError saying how to fix it."""
    installed = gemini_extension_dir()
    meta = _read_json(os.path.join(installed, ".gemini-extension-install.json"))
    if not isinstance(meta, dict):
        try:
            fix = f"`cd {plugin_root()} && gemini extensions link gemini --consent`"
        except UsageError:
            fix = GET_GEMINI
        what = "has no install record" if os.path.isdir(installed) else "is missing"
        raise UsageError(f"--agent gemini: the hypervisor extension is not installed for this user ({installed} "
                         f"{what}): run {fix} once")  # fmt: skip
    kind, source = meta.get("type"), meta.get("source")
    extension = os.path.abspath(source) if kind == "link" and isinstance(source, str) else installed
    root = os.path.dirname(extension)
    needed = [
        os.path.join(extension, "gemini-extension.json"),
        os.path.join(root, "hooks", "tool_hook.py"),
        os.path.join(root, "scripts", "launch.py"),
        os.path.join(root, "prompts", "gemini-task-worker.md"),
    ]
    missing = [path for path in needed if not os.path.isfile(path)]
    if not missing:
        return root
    if kind != "link":
        raise UsageError(f"--agent gemini: the hypervisor extension in {installed} is a copy ({kind} install), which "
                         "cannot reach the hook script and MCP server beside gemini/: run `gemini extensions uninstall "
                         f"hypervisor`, then {GET_GEMINI}")  # fmt: skip
    raise UsageError(f"--agent gemini: the hypervisor extension is linked from {extension}, but {missing[0]} is "
                     "missing: restore that clone, or run `gemini extensions uninstall hypervisor` and link a "
                     "clone again")  # fmt: skip


def _read_json(path: str) -> object:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


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
