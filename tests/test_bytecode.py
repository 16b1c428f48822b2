"""Bytecode for the hooks: under PYTHONDONTWRITEBYTECODE=1 the real hook writes hash-checked .pyc files of the
modules it compiled from source, an edited module always runs its new code, and a read-only install or many hooks
compiling at once never disturb an answer. Each test works on its own copy of the plugin's hook and package."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import py_compile
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, on_hook_path, write_task
from test_hooks import BANNED

from hypervisor.core.bytecode import CHECKED_HASH_FLAGS, is_current

WORKER = {"agent_id": "a0ab0affd383245c3", "agent_type": "hypervisor:worker"}
DENIAL = "holds no claim"
EDITED = "HOLDS NO CLAIM"  # the same length: the edit keeps gate.py's size
SOURCES = REPO / "src" / "hypervisor"


def module_key(source: Path, package_folder: Path) -> str:
    """A module's source path under the package, without .py: "__init__", "hooks/gate", "core/__init__"."""
    return source.relative_to(package_folder).with_suffix("").as_posix()


def module_name(key: str) -> str:
    dotted = ".".join(["hypervisor", *key.split("/")])
    return dotted.removesuffix(".__init__")


# every module the hook path may load (conftest.on_hook_path), by key; core/bytecode among them
HOOK_MODULES = {
    key for key in (module_key(p, SOURCES) for p in SOURCES.rglob("*.py")) if on_hook_path(module_name(key))
}


def plugin_copy(folder: Path) -> Path:
    """The hook script and the package as an install has them: sources only, no __pycache__."""
    (folder / "hooks").mkdir(parents=True)
    shutil.copy(REPO / "hooks" / "tool_hook.py", folder / "hooks" / "tool_hook.py")
    shutil.copytree(REPO / "src" / "hypervisor", folder / "src" / "hypervisor",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    return folder


def package(plugin: Path) -> Path:
    return plugin / "src" / "hypervisor"


def pycaches(plugin: Path) -> list[Path]:
    """Every __pycache__ folder of the package and its subpackages."""
    return sorted(p for p in package(plugin).rglob("__pycache__") if p.is_dir())


def folders(plugin: Path) -> list[Path]:
    """The package's folders (its subpackages too) and their __pycache__ folders: what a read-only install is."""
    return sorted(p for p in [package(plugin), *package(plugin).rglob("*")] if p.is_dir())


def pyc_key(pyc: Path, package_folder: Path) -> str:
    """The module key (see module_key) of a .pyc in some __pycache__ of the package."""
    return (pyc.parent.parent / pyc.name.split(".")[0]).relative_to(package_folder).as_posix()


def make_project(folder: Path) -> Path:
    write_task(folder / "tasks", "t1", status="active", title="Orders", scope=["src/**"])
    return folder


def hook_env(project: Path, dont_write: bool = True) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HYPERVISOR_", "CLAUDE_", "GEMINI_", "PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE"))
    }
    env["CLAUDE_PROJECT_DIR"] = str(project)
    if dont_write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env  # fmt: skip


def run_hook(plugin: Path, project: Path, *, dont_write: bool = True, flags: tuple[str, ...] = (),
             prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:  # fmt: skip
    """The real hook script of `plugin`, as hooks.json starts it, on an unclaimed worker's edit (always denied)."""
    payload = {"session_id": "s1", "transcript_path": "/dev/null", "cwd": str(project), "hook_event_name": "PreToolUse",
               "tool_name": "Write", "tool_input": {"file_path": str(project / "src" / "a.py"), "content": "x"},
               **WORKER}  # fmt: skip
    argv = [*prefix, sys.executable, "-S", *flags, str(plugin / "hooks" / "tool_hook.py")]
    return subprocess.run(argv, input=json.dumps(payload), capture_output=True, text=True,
                          env=hook_env(project, dont_write), cwd=project, timeout=120)  # fmt: skip


def reason(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result
    output = json.loads(result.stdout)
    assert output["hookSpecificOutput"]["permissionDecision"] == "deny", output
    return output["reason"]


def pyc_header(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[4:8], "little")


def pycs(plugin: Path) -> dict[str, Path]:
    """module key (see module_key) -> its .pyc in the __pycache__ of the package or of a subpackage."""
    return {
        pyc_key(p, package(plugin)): p for folder in pycaches(plugin) for p in folder.iterdir() if p.suffix == ".pyc"
    }


def edit_keeping_size_and_mtime(path: Path, old: str, new: str) -> None:
    """Change `path`'s text while its size and modification time stay what they were: a timestamp .pyc cannot tell."""
    assert len(old.encode()) == len(new.encode())
    stat = path.stat()
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_a_hook_under_dontwritebytecode_writes_hash_checked_pycs_and_then_runs_from_them(tmp_path):
    plugin, project = plugin_copy(tmp_path / "plugin"), make_project(tmp_path / "project")
    first = run_hook(plugin, project)
    assert DENIAL in reason(first) and first.stderr == "", first
    written = pycs(plugin)
    assert {"hooks/edge", "hooks/payload", "hooks/gate", "__init__", "core/bytecode"} <= set(written) <= HOOK_MODULES, \
        sorted(written)  # fmt: skip
    for name, pyc in written.items():
        assert pyc_header(pyc) == CHECKED_HASH_FLAGS, f"{name}: not a hash-checked .pyc"
        assert is_current(str(package(plugin) / f"{name}.py")), f"{name}: the .pyc does not match its source"
    stats = {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name, p in written.items()}

    second = run_hook(plugin, project, flags=("-v",))  # -v: the import system says where each module came from
    assert DENIAL in reason(second)
    ours = [line for line in second.stderr.splitlines() if str(package(plugin)) in line]
    from_source = [line for line in ours if "code object from" in line and "__pycache__" not in line]
    assert not from_source, from_source
    matched = {module_key(Path(line.split(" matches ")[1]), package(plugin)) for line in ours if " matches " in line}
    assert matched == set(written) - {"core/bytecode"}, "every module came from its .pyc"
    assert "hypervisor.core.bytecode" not in second.stderr, "nothing to compile: the compiler is not even imported"
    assert {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name, p in pycs(plugin).items()} == stats, \
        "a .pyc was rewritten although it was current"  # fmt: skip
    assert not [p for f in pycaches(plugin) for p in f.iterdir() if p.suffix != ".pyc"], (
        "temporary files were left behind"
    )


def test_a_module_edited_after_compiling_runs_its_new_code(tmp_path):
    """Same size, same mtime: a timestamp .pyc (what Python writes itself) runs the old code; ours cannot."""
    project = make_project(tmp_path / "project")
    stale = plugin_copy(tmp_path / "timestamped")
    for source in package(stale).rglob("*.py"):
        py_compile.compile(str(source), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    edit_keeping_size_and_mtime(package(stale) / "hooks" / "gate.py", DENIAL, EDITED)
    assert DENIAL in reason(run_hook(stale, project)), "the control: a timestamp .pyc hides this edit"

    plugin = plugin_copy(tmp_path / "plugin")
    assert DENIAL in reason(run_hook(plugin, project))  # writes the hash-checked .pyc files
    gate_pyc = pycs(plugin)["hooks/gate"]
    old_pyc = gate_pyc.read_bytes()
    edit_keeping_size_and_mtime(package(plugin) / "hooks" / "gate.py", DENIAL, EDITED)
    for run in range(2):
        result = run_hook(plugin, project)
        assert EDITED in reason(result) and DENIAL not in reason(result) and result.stderr == "", (run, result)
    assert gate_pyc.read_bytes() != old_pyc and is_current(str(package(plugin) / "hooks" / "gate.py")), \
        "the hook compiled the edited module again"  # fmt: skip


MECHANISMS = ["bind-mount", "immutable"] if os.geteuid() == 0 else ["chmod"]


@contextlib.contextmanager
def read_only(folders: list[Path], how: str) -> Iterator[tuple[str, ...]]:
    """Make `folders` read-only for the hook; yields the argv prefix a command needs to see them so.

    chmod does not stop root, so as root: a read-only bind mount in a private mount namespace (EROFS), or the
    immutable attribute (EPERM); as anyone else: chmod a-w (EACCES). Each way is checked to really refuse a write."""
    if how == "bind-mount":
        script = 'mount --bind -o ro "$1" "$1" || exit 96; if touch "$1/.probe" 2>/dev/null; then exit 97; fi; ' \
                 'shift; exec "$@"'  # fmt: skip
        yield ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(folders[0]))
        return
    command = (["chattr", "+i"], ["chattr", "-i"]) if how == "immutable" else (["chmod", "a-w"], ["chmod", "u+w"])
    subprocess.run([*command[0], *map(str, folders)], check=True)
    try:
        for folder in folders:
            with pytest.raises(PermissionError):
                (folder / ".probe").touch()
        yield ()
    finally:
        subprocess.run([*command[1], *map(str, folders)], check=True)


def checked(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode not in (96, 97), f"could not make the folder read-only (exit {result.returncode})"
    return result


@pytest.mark.parametrize("how", MECHANISMS)
def test_a_read_only_package_folder_does_not_disturb_the_hook(tmp_path, how):
    project = make_project(tmp_path / "project")
    bare = plugin_copy(tmp_path / "bare")  # no __pycache__ at all, and none can be made
    stale = plugin_copy(tmp_path / "stale")  # hash-checked .pyc files, then gate.py edited, then read-only
    assert DENIAL in reason(run_hook(stale, project)) and pycs(stale)
    edit_keeping_size_and_mtime(package(stale) / "hooks" / "gate.py", DENIAL, EDITED)
    stale_before = {name: p.read_bytes() for name, p in pycs(stale).items()}
    compile_code = ("import sys; sys.path.insert(0, sys.argv[1]); from hypervisor.core.bytecode import compile_package;"
                    "print(len(compile_package(quiet=False)))")  # fmt: skip
    for plugin, want in ((bare, DENIAL), (stale, EDITED)):
        with read_only(folders(plugin), how) as prefix:
            for dont_write in (True, False, True):
                result = checked(run_hook(plugin, project, dont_write=dont_write, prefix=prefix))
                assert want in reason(result) and result.stderr == "", (how, plugin.name, dont_write, result)
            compiled = checked(
                subprocess.run(
                    [*prefix, sys.executable, "-S", "-c", compile_code, str(plugin / "src")],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            )
            assert compiled.returncode == 0 and compiled.stdout == "0\n", compiled
            refused = compiled.stderr.splitlines()
            named = [Path(line.split(" ", 2)[1]).parent for line in refused]
            assert refused and all("cannot write" in line for line in refused), refused
            assert len(named) == len(set(named)), "one refused write per folder, then quiet"
    assert not pycaches(bare)
    assert {name: p.read_bytes() for name, p in pycs(stale).items()} == stale_before
    assert not [p for f in pycaches(stale) for p in f.iterdir() if p.suffix != ".pyc"]


def test_many_hooks_compiling_at_once_all_answer_and_leave_sound_pycs(tmp_path):
    plugin, project = plugin_copy(tmp_path / "plugin"), make_project(tmp_path / "project")
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda _: run_hook(plugin, project), range(12)))
    for result in results:
        assert DENIAL in reason(result) and result.stderr == "", result
    written = pycs(plugin)
    assert {"hooks/edge", "hooks/gate", "hooks/payload"} <= set(written)
    assert all(is_current(str(package(plugin) / f"{name}.py")) for name in written)
    assert not [p for f in pycaches(plugin) for p in f.iterdir() if p.suffix != ".pyc"], (
        "temporary files were left behind"
    )


def test_compile_package_compiles_what_is_missing_or_stale_and_only_that(tmp_path):
    plugin = plugin_copy(tmp_path / "plugin")
    (package(plugin) / "broken.py").write_text("def broken(:\n")
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); from hypervisor.core.bytecode import compile_package;"
            "print(json.dumps(compile_package(quiet=False)))")  # fmt: skip
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPYCACHEPREFIX", None)

    def compile_now() -> tuple[list[str], str]:
        result = subprocess.run([sys.executable, "-S", "-c", code, str(plugin / "src")], capture_output=True,
                                text=True, env=env, timeout=120)  # fmt: skip
        assert result.returncode == 0, result
        return [pyc_key(Path(p), package(plugin)) for p in json.loads(result.stdout)], result.stderr

    sources = sorted(module_key(p, package(plugin)) for p in package(plugin).rglob("*.py"))
    first, err = compile_now()
    assert sorted(first) == [name for name in sources if name != "broken"], first
    assert "broken.py not compiled: does not compile" in err and err.count("\n") == 1, err
    assert all(pyc_header(p) == CHECKED_HASH_FLAGS for p in pycs(plugin).values())
    assert compile_now()[0] == [], "everything current: nothing rewritten"
    edit_keeping_size_and_mtime(package(plugin) / "hooks" / "gate.py", DENIAL, EDITED)
    py_compile.compile(str(package(plugin) / "core" / "rules.py"), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)  # fmt: skip
    assert sorted(compile_now()[0]) == ["core/rules", "hooks/gate"], (
        "the stale one, and the one that was not hash-checked"
    )

    shown = subprocess.run([sys.executable, "-m", "hypervisor.core.bytecode"], cwd=plugin / "src", capture_output=True,
                           text=True, env=env, timeout=120)  # fmt: skip
    assert shown.returncode == 0 and "0 module(s)" in shown.stdout and "broken.py" in shown.stderr, shown


def test_the_hook_compiling_imports_only_the_standard_library_and_the_light_core(tmp_path):
    plugin, project = plugin_copy(tmp_path / "plugin"), make_project(tmp_path / "project")
    result = run_hook(plugin, project, flags=("-X", "importtime"))
    assert DENIAL in reason(result)
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}  # fmt: skip
    assert "hypervisor.core.bytecode" in imported and "py_compile" in imported, "the cold hook compiled"
    assert not [name for name in imported if not on_hook_path(name)], sorted(imported)
    assert not {name for name in imported if name.split(".")[0] in BANNED}
    assert pycs(plugin), "and it wrote the .pyc files"
