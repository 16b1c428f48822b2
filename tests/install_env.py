"""The plugin installed the way a user installs it: a fresh clone of this repository (no .venv, no build/), then
the real `claude plugin marketplace add <clone>` and `claude plugin install hypervisor@hypervisor` into a fresh HOME.

    plugin = install_plugin(claude, tmp / "home", make_clone(tmp / "clone"))
    plugin.cache      # ~/.claude/plugins/cache/hypervisor/hypervisor/<version>/ (what install copied)
    plugin.data       # ~/.claude/plugins/data/hypervisor-hypervisor (CLAUDE_PLUGIN_DATA: the first start's venv)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from claude_cli import hermetic_env

REPO = Path(__file__).resolve().parent.parent
MARKETPLACE = PLUGIN = "hypervisor"
PLUGIN_KEY = f"{PLUGIN}@{MARKETPLACE}"
NO_MODEL = "http://127.0.0.1:9"  # the plugin commands never call the model


def repo_files(repo: Path = REPO) -> list[str]:
    """Tracked and untracked-but-not-ignored files (uncommitted work included), as a user's clone would hold
    them once that work is committed; tracked files deleted in the work tree are left out."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard", "-z"], check=True,
                         capture_output=True).stdout.decode()  # fmt: skip
    return sorted({name for name in out.split("\0") if name and os.path.lexists(repo / name)})


def make_clone(dest: Path, repo: Path = REPO) -> Path:
    """A real git repository at `dest` holding `repo_files(repo)`, committed once."""
    dest.mkdir(parents=True)
    for name in repo_files(repo):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target, follow_symlinks=False)
    git = ["git", "-C", str(dest), "-c", "user.name=Test User", "-c", "user.email=test@example.com",
           "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]  # fmt: skip
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "hypervisor as a user clones it"]):
        subprocess.run([*git, *args], check=True, capture_output=True, text=True)
    return dest


@dataclass
class InstalledPlugin:
    home: Path
    clone: Path
    commands: list = field(default_factory=list)  # the CompletedProcess of each `claude plugin ...` step

    @property
    def claude_dir(self) -> Path:
        return self.home / ".claude"

    @property
    def settings(self) -> dict:
        return json.loads((self.claude_dir / "settings.json").read_text())

    @property
    def installed_plugins(self) -> dict:
        return json.loads((self.claude_dir / "plugins" / "installed_plugins.json").read_text())

    @property
    def cache(self) -> Path:
        """The one version folder under ~/.claude/plugins/cache/<marketplace>/<plugin>/."""
        versions = sorted((self.claude_dir / "plugins" / "cache" / MARKETPLACE / PLUGIN).iterdir())
        assert len(versions) == 1, versions
        return versions[0]

    @property
    def data(self) -> Path:
        return self.claude_dir / "plugins" / "data" / f"{PLUGIN}-{MARKETPLACE}"

    def describe(self) -> str:
        return "\n".join(f"$ {' '.join(map(str, c.args[1:]))}\n-> exit {c.returncode}\n{c.stdout}{c.stderr}"
                         for c in self.commands)  # fmt: skip


def plugin_command(claude: str, home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`claude plugin ARGS...` with the tests' hermetic environment and `home` as HOME."""
    return subprocess.run([claude, "plugin", *args], env=hermetic_env(NO_MODEL, str(home)), cwd=str(cwd or home),
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip


def install_plugin(claude: str, home: Path, clone: Path) -> InstalledPlugin:
    """What the README tells a user to run, in a fresh HOME: add the clone as a marketplace, install the plugin."""
    home.mkdir(parents=True, exist_ok=True)
    plugin = InstalledPlugin(home, clone)
    for args in (("marketplace", "add", str(clone)), ("install", PLUGIN_KEY)):
        done = plugin_command(claude, home, *args)
        plugin.commands.append(done)
        assert done.returncode == 0, plugin.describe()
    return plugin


def tree(folder: Path, depth: int = 2) -> list[str]:
    """The entries of `folder` down to `depth` levels, relative, dirs marked with '/': for reports and asserts."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if len(rel.parts) <= depth:
            found.append(f"{rel}/" if path.is_dir() else str(rel))
    return found
