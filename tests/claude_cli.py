"""Run the real, pinned Claude Code binary headless against a fake model (see fake_model.py).

    with FakeModel(script) as server:
        result = run_claude("do it", plugin_dir=plugin, cwd=project, model_url=server.url)
    assert result.returncode == 0, result.describe()
    result.json["result"]   # the final assistant text

The run is hermetic: a fresh HOME, the parent's CLAUDE*/ANTHROPIC_* variables removed (the surrounding coding
client sets several), a fake API key, all non-essential traffic, auto-updates and telemetry disabled, and
IS_SANDBOX=1 so that `--permission-mode bypassPermissions` is accepted when the tests run as root.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npm_tools import ensure_claude

# Environment variables of the parent's AI coding client (or user settings) that must not leak into a test run.
STRIPPED_PREFIXES = ("CLAUDE", "ANTHROPIC_", "AI_AGENT", "MCP_", "OTEL_", "GEMINI_", "GOOGLE_", "OPENAI_", "AWS_BEARER")
STRIPPED_NAMES = {"DISABLE_AUTOUPDATER", "DISABLE_TELEMETRY", "DEBUG", "NODE_OPTIONS", "XDG_CONFIG_HOME",
                  "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                  "http_proxy", "https_proxy", "all_proxy"}  # fmt: skip

HERMETIC_ENV = {
    "ANTHROPIC_API_KEY": "sk-test",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # no telemetry, error reports, update checks, feature flags
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_UPDATES": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_INSTALLATION_CHECKS": "1",
    "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL": "1",
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
    "IS_SANDBOX": "1",  # root may use bypassPermissions only "in a sandbox"
    "NO_COLOR": "1",
    "CI": "1",
}


@dataclass
class ClaudeResult:
    """A finished `claude -p` run: the CompletedProcess fields plus the parsed `--output-format json` result."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    home: str
    json: Any = None  # the parsed stdout (a dict for --output-format json), None if it wasn't JSON
    timed_out: bool = False
    env: dict = field(default_factory=dict, repr=False)

    @property
    def result(self) -> str | None:
        """The final assistant text (`result` of the JSON output)."""
        return self.json.get("result") if isinstance(self.json, dict) else None

    @property
    def is_error(self) -> bool:
        return self.returncode != 0 or not isinstance(self.json, dict) or bool(self.json.get("is_error"))

    def describe(self) -> str:
        return (f"claude exited {self.returncode}{' (timed out)' if self.timed_out else ''}\n"
                f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-6000:]}")  # fmt: skip


def hermetic_env(model_url: str, home: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a test run of claude: the parent's minus AI-client variables, plus HERMETIC_ENV."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(STRIPPED_PREFIXES) and key not in STRIPPED_NAMES
    }
    env.update(HERMETIC_ENV)
    env.update(HOME=home, ANTHROPIC_BASE_URL=model_url, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.update(extra or {})
    return env


def run_claude(
    prompt: str,
    *,
    plugin_dir: str | os.PathLike | Iterable[str | os.PathLike] | None,
    cwd: str | os.PathLike,
    model_url: str,
    extra_args: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    home: str | os.PathLike | None = None,
    output_format: str = "json",
    claude: str | None = None,
) -> ClaudeResult:
    """Run `claude -p <prompt> --plugin-dir <dir> --output-format json --permission-mode bypassPermissions`.

    `plugin_dir` may be one directory, several, or None; `env` is added last (it can override anything);
    `home` defaults to a fresh temporary directory (kept, so tests can read ~/.claude afterwards: `result.home`)."""
    exe = claude or ensure_claude()
    home = str(home) if home else tempfile.mkdtemp(prefix="claude-home-")
    Path(home).mkdir(parents=True, exist_ok=True)
    args = [exe, "-p", prompt, "--output-format", output_format, "--permission-mode", "bypassPermissions"]
    if output_format == "stream-json":
        args.append("--verbose")
    if plugin_dir is not None:
        dirs = [plugin_dir] if isinstance(plugin_dir, (str, os.PathLike)) else list(plugin_dir)
        for directory in dirs:
            args += ["--plugin-dir", str(directory)]
    args += [str(arg) for arg in extra_args]
    full_env = hermetic_env(model_url, home, env)
    try:
        proc = subprocess.run(args, cwd=str(cwd), env=full_env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)  # fmt: skip
        stdout, stderr, code, timed_out = proc.stdout, proc.stderr, proc.returncode, False
    except subprocess.TimeoutExpired as exc:
        stdout = _text(exc.stdout)
        stderr = _text(exc.stderr)
        code, timed_out = -9, True
    parsed = None
    if output_format == "json":
        try:
            parsed = json.loads(stdout)
        except ValueError:
            parsed = None
    elif output_format == "stream-json":
        parsed = [json.loads(line) for line in stdout.splitlines() if line.strip().startswith("{")]
    return ClaudeResult(args, code, stdout, stderr, home, parsed, timed_out, full_env)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
