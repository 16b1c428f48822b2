"""Whole-process start of the `hypervisor` CLI beside `python -c pass`: --version, --help, the hot commands, list.

Each variant is a fresh process of the `hypervisor` beside this interpreter (or of --before's), alternated in
rounds so drift hits them alike (default 15 rounds); medians are shown, and each over `python -c pass` with the
same interpreter:
  python -c pass     the floor: what any Python command costs to start
  --version, --help  the top-level answers
  claim              `claim --caller bench --json` on a store of --tasks tasks (bench/claims.py's shape)
  renew, show        `renew ID --token T --json` and `show ID --json` on the task just claimed
  release, complete  every other round each: the task back to the queue (claimed again the next round) or done
  list               `list --status active` (every task of the store)
Goals: --version and --help within 1.3x of `python -c pass`, claim within 2x; the others are shown without one.
`--before PYTHON` runs a second installation in the same rounds (e.g. a venv of the code before a change), each on
a store of its own. The package's .pyc files are brought up to date first (as `dev.py setup` does), and each
command's modules without current bytecode are listed. The environment is this one (PYTHONDONTWRITEBYTECODE as
set). Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from benchlib import ForeignLoad, emit, run_timed, source_fingerprint
from claims import generate_store

GOALS = {"version": 1.3, "help": 1.3, "claim": 2.0}
LABELS = {"bare": "python -c pass", "version": "hypervisor --version", "help": "hypervisor --help",
          "claim": "hypervisor claim --json", "renew": "hypervisor renew --json", "show": "hypervisor show --json",
          "release": "hypervisor release", "complete": "hypervisor complete",
          "list": "hypervisor list --status active"}  # fmt: skip
# Run in the measured interpreter: `hypervisor ARGS` as its console script runs it, then, at exit, every module it
# imported whose bytecode the import system could not use (none written, stale, or for another source).
PROBE = r"""
import atexit, os, sys

def report():
    names = sorted(sys.modules)
    from importlib.util import MAGIC_NUMBER, source_hash
    stale = []
    for name in names:
        spec = getattr(sys.modules.get(name), "__spec__", None)
        source, cached = getattr(spec, "origin", None), getattr(spec, "cached", None)
        if not (source and source.endswith(".py") and cached):
            continue
        try:
            with open(cached, "rb") as handle:
                header = handle.read(16)
            with open(source, "rb") as handle:
                text = handle.read()
            flags = int.from_bytes(header[4:8], "little")
            if flags & 1:
                current = header[8:16] == source_hash(text)
            else:
                stat = os.stat(source)
                current = (int.from_bytes(header[8:12], "little") == int(stat.st_mtime) & 0xFFFFFFFF
                           and int.from_bytes(header[12:16], "little") == stat.st_size & 0xFFFFFFFF)
            current = current and header[:4] == MAGIC_NUMBER
        except OSError:
            current = False
        if not current:
            stale.append(name)
    with open(os.environ["STARTUP_PROBE_OUT"], "w") as handle:
        handle.write(" ".join(names) + "\n" + " ".join(stale))

atexit.register(report)
script = sys.argv[1]
sys.argv = [script, *sys.argv[2:]]
import runpy
runpy.run_path(script, run_name="__main__")
"""


class Side:
    """One installation: its interpreter, the `hypervisor` beside it, and a store of its own."""

    def __init__(self, name: str, python: str, template: str, workdir: str) -> None:
        self.name = name
        self.python = python
        self.hypervisor = os.path.join(os.path.dirname(python), "hypervisor")
        if not os.path.exists(self.hypervisor):
            raise SystemExit(f"startup benchmark: no `hypervisor` beside {python}")
        self.root = os.path.join(workdir, name, "tasks")
        shutil.copytree(template, self.root)
        self.samples: dict[str, list[tuple[float, float]]] = {name: [] for name in LABELS}  # (wall, CPU) seconds

    def command(self, *args: str) -> list[str]:
        return [self.hypervisor, *args]

    def tasks(self, *args: str) -> list[str]:
        return [self.hypervisor, *args, "--tasks", self.root]


def timed(argv: list[str], cwd: str) -> tuple[tuple[float, float], str]:
    """Wall and CPU (user + system) seconds of one process, and its stdout; SystemExit if it fails."""
    run = run_timed(argv, cwd)
    if run.returncode != 0:
        raise SystemExit(f"startup benchmark: {' '.join(argv)} exited {run.returncode}:\n{run.stderr[-2000:]}")
    return (run.wall, run.cpu), run.stdout


def one_round(side: Side, number: int, cwd: str) -> None:
    """Every variant once, in a fixed order; the claimed task goes back (even rounds) or is completed (odd)."""

    def measure(name: str, argv: list[str]) -> str:
        elapsed, out = timed(argv, cwd)
        side.samples[name].append(elapsed)
        return out

    measure("bare", [side.python, "-c", "pass"])
    measure("version", side.command("--version"))
    measure("help", side.command("--help"))
    claimed = json.loads(measure("claim", side.tasks("claim", "--caller", "bench", "--json")))
    task, token = claimed["id"], claimed["claim_token"]
    measure("renew", side.tasks("renew", task, "--token", token, "--json"))
    measure("show", side.tasks("show", task, "--json"))
    if number % 2 == 0:
        measure("release", side.tasks("release", task, "--token", token))
    else:
        measure("complete", side.tasks("complete", task, "--token", token, "--summary", "benchmarked"))
    measure("list", side.tasks("list", "--status", "active"))


def without_bytecode(side: Side, cwd: str) -> dict[str, dict]:
    """Per command: how many modules it imports beyond a bare start, and those it had no current bytecode for.

    Its claim is released again."""
    found = {}
    empty = os.path.join(cwd, "empty.py")
    with open(empty, "w", encoding="utf-8"), tempfile.NamedTemporaryFile(prefix="probe-", dir=cwd) as out:
        env = {**os.environ, "STARTUP_PROBE_OUT": out.name}

        def probe(name: str, args: list[str], script: str = side.hypervisor) -> str:
            done = subprocess.run([side.python, "-c", PROBE, script, *args], cwd=cwd, env=env, capture_output=True,
                                  text=True)  # fmt: skip
            with open(out.name, encoding="utf-8") as handle:
                names, stale = (line.split() for line in handle.read().split("\n"))
            found[name] = {"modules": set(names), "without_bytecode": stale}
            return done.stdout

        probe("bare", [], empty)
        probe("version", ["--version"])
        probe("help", ["--help"])
        claimed = json.loads(probe("claim", ["claim", "--caller", "probe", "--json", "--tasks", side.root]))
        probe("renew", ["renew", claimed["id"], "--token", claimed["claim_token"], "--tasks", side.root])
        probe("release", ["release", claimed["id"], "--token", claimed["claim_token"], "--tasks", side.root])
        probe("list", ["list", "--status", "active", "--tasks", side.root])
    bare = found.pop("bare")["modules"]
    return {name: {**probe, "modules": len(probe["modules"] - bare)} for name, probe in found.items()}


def compile_bytecode(python: str) -> str:
    """`python -m hypervisor.core.bytecode` where that module exists (as dev.py setup runs it): what it said."""
    done = subprocess.run([python, "-m", "hypervisor.core.bytecode"], capture_output=True, text=True)
    return (done.stdout or done.stderr).strip().splitlines()[-1] if (done.stdout or done.stderr) else ""


def figures(samples: dict[str, list[tuple[float, float]]]) -> dict[str, dict]:
    """Per variant: median wall and CPU milliseconds, and each over python -c pass's."""
    bare_wall, bare_cpu = (statistics.median(values) for values in zip(*samples["bare"], strict=True))
    found = {}
    for name, values in samples.items():
        wall, cpu = (statistics.median(column) for column in zip(*values, strict=True))
        found[name] = {"median_ms": wall * 1000, "ratio": wall / bare_wall, "cpu_ms": cpu * 1000,
                       "cpu_ratio": cpu / bare_cpu, "samples": len(values)}  # fmt: skip
    return found


def table(report: dict) -> str:
    sides = list(report["sides"])
    head = f"{'command':<33}" + "".join(f"{side + ' ms':>11}{'ratio':>6}{'cpu':>6}" for side in sides)
    lines = [f"hypervisor start-up: {report['rounds']} rounds, {report['tasks']} tasks. Medians of wall ms; ratio: "
             "of wall to python -c pass's (the goal's), cpu: the same of CPU time", head + f"{'goal':>6}  verdict"]  # fmt: skip
    for name, label in LABELS.items():
        row = f"{label:<33}"
        for side in sides:
            figure = report["sides"][side]["figures"][name]
            row += f"{figure['median_ms']:>11.1f}{figure['ratio']:>6.2f}{figure['cpu_ratio']:>6.2f}"
        if name in GOALS:
            row += f"{GOALS[name]:>5.1f}x  {'MEETS' if report['goals'][name]['meets'] else 'NOT MET'}"
        lines.append(row)
    for side, data in report["sides"].items():
        script = "pip's console-script wrapper (imports re)" if data["wrapper_imports_re"] else "a plain script"
        lines.append(f"{side}: {data['hypervisor']} is {script}; {data['bytecode']}")
        for name, found in data["imports"].items():
            missing = ", ".join(found["without_bytecode"]) or "none"
            lines.append(f"  {name:<8} imports {found['modules']:>4} modules beyond a bare start; without current "
                         f"bytecode: {missing}")  # fmt: skip
    start, end = report["loadavg_1m"]
    lines.append(f"other processes used {report['foreign_cpu_per_s']:.2f} CPU-s per second during the rounds "
                 f"({report['cpus']} CPUs; load average {start:.2f} -> {end:.2f})")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--tasks", type=int, default=1000, help="tasks in the store (default 1000)")
    parser.add_argument("--before", metavar="PYTHON", help="also measure the `hypervisor` beside this interpreter")
    parser.add_argument("--json", action="store_true", help="print a JSON object on stdout (the table goes to stderr)")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="hypervisor-bench-startup-")  # cwd of the commands: no .hypervisor.yaml
    try:
        template = os.path.join(workdir, "template")
        generate_store(template, args.tasks)
        pythons = {"now": sys.executable, **({"before": args.before} if args.before else {})}
        bytecode = {name: compile_bytecode(python) for name, python in pythons.items()}
        sides = [Side(name, python, template, workdir) for name, python in pythons.items()]
        imports = {side.name: without_bytecode(side, workdir) for side in sides}  # also builds each store's index
        fingerprint = source_fingerprint()
        load = os.getloadavg()[0]
        foreign = ForeignLoad()
        for number in range(args.rounds):
            for side in sides if number % 2 == 0 else reversed(sides):
                one_round(side, number, workdir)
        foreign_cpu = foreign.stop()
        report = {"benchmark": "startup", "rounds": args.rounds, "tasks": args.tasks, "cpus": os.cpu_count(),
                  "python": sys.version.split()[0], "src_sha256": fingerprint,
                  "dontwritebytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
                  "foreign_cpu_per_s": foreign_cpu, "loadavg_1m": [load, os.getloadavg()[0]], "sides": {}}  # fmt: skip
        for side in sides:
            with open(side.hypervisor, encoding="utf-8", errors="replace") as handle:
                wrapper_imports_re = "\nimport re\n" in handle.read()
            report["sides"][side.name] = {"python": side.python, "hypervisor": side.hypervisor,
                                          "wrapper_imports_re": wrapper_imports_re, "bytecode": bytecode[side.name],
                                          "imports": imports[side.name], "figures": figures(side.samples)}  # fmt: skip
        report["goals"] = {name: {"max_ratio": goal, "meets": report["sides"]["now"]["figures"][name]["ratio"] <= goal}
                           for name, goal in GOALS.items()}  # fmt: skip
        emit(table(report), report, args.json)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
