"""Run the real, pinned Gemini CLI headless against a fake Gemini API (see fake_gemini.py).

    with FakeGemini(script) as server:
        result = run_gemini("do it", project, server.url, extension_dir=ext)
    assert result.returncode == 0, result.describe()
    result.stdout        # the final model text (default text output)

The run is hermetic: a fresh HOME whose ~/.gemini/settings.json selects API-key auth (needed: with
GOOGLE_GEMINI_BASE_URL alone the CLI picks the "gateway" auth type and exits 41) and turns off usage statistics,
telemetry, update checks and IDE integration; the parent's GEMINI_*/GOOGLE_* (and other AI-client) variables are
removed; GEMINI_CLI_TRUST_WORKSPACE=true so the workspace is trusted when settings are read (project hooks load),
and GEMINI_CLI_NO_RELAUNCH=true so the CLI doesn't re-spawn itself in a second node process.
A network guard (NODE_OPTIONS=--require <home>/.gemini-test/netguard.cjs) makes fetch() to any host but loopback
fail at once and logs the URL (`result.blocked_urls`): `gemini extensions link/install` send a Clearcut event to
play.googleapis.com even with privacy.usageStatisticsEnabled=false (their telemetry Config ignores that setting).
The flags are `--skip-trust --yolo -p PROMPT`: without --yolo, headless mode offers the model no write/shell tools.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npm_tools import ensure_gemini

# Environment variables of the parent's AI coding client (or user settings) that must not leak into a test run.
STRIPPED_PREFIXES = ("GEMINI_", "GOOGLE_", "CLAUDE", "ANTHROPIC_", "AI_AGENT", "MCP_", "OTEL_", "OPENAI_",
                     "AWS_BEARER", "CLOUDSDK_", "VERTEX")  # fmt: skip
STRIPPED_NAMES = {"DEBUG", "DEBUG_MODE", "NODE_OPTIONS", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME",
                  "XDG_STATE_HOME", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                  "all_proxy", "SANDBOX", "SEATBELT_PROFILE", "BUILD_SANDBOX", "TERM_PROGRAM", "GITHUB_SHA", "SURFACE",
                  "CLOUD_SHELL", "GCP_PROJECT"}  # fmt: skip

HERMETIC_ENV = {
    "GEMINI_API_KEY": "test",
    "GEMINI_CLI_TRUST_WORKSPACE": "true",  # trusted when settings load (--skip-trust alone is too late for hooks)
    "GEMINI_CLI_NO_RELAUNCH": "true",  # no second node process (the relaunch only raises the heap limit)
    "GEMINI_TELEMETRY_ENABLED": "false",
    "NO_COLOR": "1",
    "NO_BROWSER": "1",
    "CI": "1",
}

SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    "ide": {"enabled": False},
}

FLAGS = ("--skip-trust", "--yolo")

NET_GUARD = """\
// Test harness (gemini_cli.py): fetch() over http(s) may only reach loopback; other hosts are logged and refused.
'use strict';
const fs = require('fs');
const realFetch = globalThis.fetch;
const log = process.env.FAKE_GEMINI_NET_LOG;
const LOCAL = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);
if (typeof realFetch === 'function') {
  globalThis.fetch = function guardedFetch(input, init) {
    let url;
    try {
      url = new URL(typeof input === 'string' ? input : (input && input.url) || String(input));
    } catch (err) {
      return realFetch.call(this, input, init);
    }
    if (!/^(https?|wss?):$/.test(url.protocol) || LOCAL.has(url.hostname)) return realFetch.call(this, input, init);
    if (log) { try { fs.appendFileSync(log, url.href + '\\n'); } catch (err) { /* ignore */ } }
    return Promise.reject(new TypeError('network access blocked by the test harness: ' + url.href));
  };
}
"""


@dataclass
class GeminiResult:
    """A finished `gemini -p` run: the CompletedProcess fields plus the parsed output."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    home: str
    events: list[dict] | None = None  # `-o stream-json`: one dict a line
    json: Any = None  # `-o json`: the parsed stdout
    timed_out: bool = False
    seconds: float = 0.0
    blocked_urls: list[str] = field(default_factory=list)  # non-loopback fetch() attempts the guard refused
    env: dict = field(default_factory=dict, repr=False)

    @property
    def tool_results(self) -> list[dict]:
        """`-o stream-json` only: the tool_result events, in order."""
        return [event for event in self.events or [] if event.get("type") == "tool_result"]

    @property
    def result(self) -> dict | None:
        """`-o stream-json` only: the final `result` event (status, stats), None if there is none."""
        return next((event for event in reversed(self.events or []) if event.get("type") == "result"), None)

    @property
    def text(self) -> str:
        """The model's final text: `response` of `-o json`, the assistant message deltas of `-o stream-json`,
        else stdout."""
        if isinstance(self.json, dict) and isinstance(self.json.get("response"), str):
            return self.json["response"]
        if self.events is not None:
            return "".join(event.get("content", "") for event in self.events
                           if event.get("type") == "message" and event.get("role") == "assistant")  # fmt: skip
        return self.stdout

    def describe(self) -> str:
        return (f"gemini exited {self.returncode}{' (timed out)' if self.timed_out else ''} after {self.seconds:.1f}s\n"
                f"args: {self.args[1:]}\n--- stdout ---\n{self.stdout[-6000:]}\n"
                f"--- stderr ---\n{self.stderr[-6000:]}")  # fmt: skip


def hermetic_gemini_env(
    model_url: str, home: str | os.PathLike, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for a test run of gemini: the parent's minus AI-client variables, plus HERMETIC_ENV,
    HOME=`home`, GOOGLE_GEMINI_BASE_URL=`model_url` and the network guard (written into `home`); `extra` is added
    last (it can override anything)."""
    home = str(home)
    guard = Path(home) / ".gemini-test" / "netguard.cjs"
    guard.parent.mkdir(parents=True, exist_ok=True)
    if not guard.exists() or guard.read_text() != NET_GUARD:
        guard.write_text(NET_GUARD)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(STRIPPED_PREFIXES) and key not in STRIPPED_NAMES
    }
    env.update(HERMETIC_ENV)
    env.update(
        HOME=home,
        USERPROFILE=home,
        GOOGLE_GEMINI_BASE_URL=model_url,
        # No /etc/gemini-cli/settings.json or system defaults from the machine running the tests.
        GEMINI_CLI_SYSTEM_SETTINGS_PATH=os.path.join(home, ".gemini-system", "settings.json"),
        GEMINI_CLI_SYSTEM_DEFAULTS_PATH=os.path.join(home, ".gemini-system", "system-defaults.json"),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        NODE_OPTIONS=f'--require "{guard}"',
        FAKE_GEMINI_NET_LOG=str(guard.parent / "blocked-urls.log"),
    )
    env.update(extra or {})
    return env


def prepare_home(home: str | os.PathLike, settings: Mapping[str, Any] | None = None) -> Path:
    """Create `home`/.gemini/settings.json (SETTINGS, deep-merged with `settings`) and return `home`."""
    home = Path(home)
    (home / ".gemini").mkdir(parents=True, exist_ok=True)
    path = home / ".gemini" / "settings.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    merged = _merge(_merge(current, SETTINGS), settings or {})
    path.write_text(json.dumps(merged, indent=2))
    return home


def link_extension(
    extension_dir: str | os.PathLike,
    home: str | os.PathLike,
    *,
    gemini: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess | None:
    """`gemini extensions link <dir> --consent` for `home` (raises RuntimeError if it fails or hangs); None if
    `dir` is already linked there (linking twice is an error for the CLI).

    Not a symlink: the CLI records the source path and loads the extension from it on every run."""
    if linked_source(extension_dir, home) == str(Path(extension_dir).resolve()):
        return None
    exe = gemini or ensure_gemini()
    prepare_home(home)
    full_env = hermetic_gemini_env("http://127.0.0.1:9", home, env)
    args = [exe, "extensions", "link", str(Path(extension_dir).resolve()), "--consent"]
    try:
        proc = subprocess.run(args, cwd=str(home), env=full_env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{' '.join(args)} hung for {timeout}s: {_text(exc.stdout)}{_text(exc.stderr)}") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def linked_source(extension_dir: str | os.PathLike, home: str | os.PathLike) -> str | None:
    """The source path recorded for the extension in `extension_dir` (by its manifest name) in `home`, if any."""
    try:
        name = json.loads((Path(extension_dir) / "gemini-extension.json").read_text())["name"]
        meta = json.loads((Path(home) / ".gemini" / "extensions" / name / ".gemini-extension-install.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta.get("source") if isinstance(meta, dict) else None


def run_gemini(
    prompt: str,
    cwd: str | os.PathLike,
    model_url: str,
    *,
    extension_dir: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Iterable[str] = (),
    gemini: str | None = None,
    timeout: float = 240,
    home: str | os.PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
) -> GeminiResult:
    """Run `gemini --skip-trust --yolo -p <prompt> [extra_args]` in `cwd` against the fake API at `model_url`.

    `extension_dir` (one directory or several) is linked into the scratch HOME first; `env` is added to the
    hermetic environment last (e.g. HYPERVISOR_WORKER=1); `settings` is deep-merged into ~/.gemini/settings.json;
    `home` defaults to a fresh temporary directory (kept, so tests can read ~/.gemini afterwards: `result.home`).
    Pass `extra_args=("-o", "stream-json")` to get `result.events`, `("-o", "json")` for `result.json`."""
    exe = gemini or ensure_gemini()
    home = str(home) if home else tempfile.mkdtemp(prefix="gemini-home-")
    prepare_home(home, settings)
    if extension_dir is not None:
        dirs = [extension_dir] if isinstance(extension_dir, (str, os.PathLike)) else list(extension_dir)
        for directory in dirs:
            link_extension(directory, home, gemini=exe, env=env)
    extra = [str(arg) for arg in extra_args]
    args = [exe, *FLAGS, "-p", prompt, *extra]
    full_env = hermetic_gemini_env(model_url, home, env)
    net_log = Path(full_env["FAKE_GEMINI_NET_LOG"])
    already = net_log.stat().st_size if net_log.exists() else 0
    started = time.monotonic()
    # Its own session, so that a timeout also kills the MCP servers and hooks it started.
    proc = subprocess.Popen(args, cwd=str(cwd), env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        code, timed_out = proc.returncode, False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stdout, stderr = proc.communicate()
        code, timed_out = -9, True
    seconds = time.monotonic() - started
    blocked = []
    if net_log.exists():
        with open(net_log, "rb") as handle:
            handle.seek(already)
            blocked = [line.strip() for line in handle.read().decode("utf-8", "replace").splitlines() if line.strip()]
    output_format = _output_format(extra)
    events = parsed = None
    if output_format == "stream-json":
        events = []
        for line in stdout.splitlines():
            if line.strip().startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
    elif output_format == "json":
        try:
            parsed = json.loads(stdout)
        except ValueError:
            parsed = None
    return GeminiResult(args, code, stdout, stderr, home, events, parsed, timed_out, seconds, blocked, full_env)


def _output_format(args: list[str]) -> str:
    for i, arg in enumerate(args):
        if arg in ("-o", "--output-format") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--output-format="):
            return arg.split("=", 1)[1]
    return "text"


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict:
    out = dict(base)
    for key, value in extra.items():
        nested = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = _merge(out[key], value) if nested else value
    return out


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
