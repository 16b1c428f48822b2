"""Wall time of the tool hook (`python3 -S hooks/tool_hook.py`, as hooks.json runs it) beside a bare interpreter start.

Five variants, interleaved round-robin in one run so drift hits them alike, each a fresh subprocess:
  bare        `python3 -c pass` (site-packages processed: what any Python tool costs to start)
  bare -S     `python3 -S -c pass` (the floor the hook can reach)
  allowed     PreToolUse Write inside the claimed task's scope, by the worker bound to that claim
  denied      PreToolUse Write by a hypervisor:worker that holds no claim
  post        PostToolUse Write by the holder (lease renewal under the task lock + one journal line)
on a store of --tasks tasks with one claimed task, its claim bound to the worker by the hook itself.
The target is allowed and denied within 1.5x of bare `python3 -c pass`; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import ForeignLoad, emit, source_fingerprint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOOK = [sys.executable, "-S", os.path.join("hooks", "tool_hook.py")]  # relative to REPO, the cwd hooks.json implies
SUBFOLDERS = 10
TARGET_RATIO = 1.5
CLAIMED = "task-000000"
SCOPE = "src/**"
WORKER = {"session_id": "bench-session-6d1683e8", "agent_id": "a033b0a6f11c22354", "agent_type": "hypervisor:worker"}
STRANGER = {"session_id": "bench-session-6d1683e8", "agent_id": "b99f00d000000000", "agent_type": "hypervisor:worker"}
CLAIM_TOOL = "mcp__plugin_hypervisor_task_manager__claim_next_task"
VARIANTS = ("bare", "bare_S", "allowed", "denied", "post")
LABELS = {"bare": "python3 -c pass", "bare_S": "python3 -S -c pass", "allowed": "hook: allowed edit",
          "denied": "hook: denied edit", "post": "hook: post (renew+journal)"}  # fmt: skip


# -- the store ----------------------------------------------------------------------------------------------------
def task_text(i: int) -> str:
    scope = f"scope: [{SCOPE}]\n" if i == 0 else ""
    return (
        "---\n"
        f"title: Task {i} - tidy up component {i % 97}\n"
        f"status: {'active' if i % 4 == 0 else 'inbox'}\n"
        f"priority: {i % 5}\n"
        f"tags: [bench, area-{i % SUBFOLDERS}]\n"
        f"{scope}"
        "---\n"
        f"# Task {i}\n\nBody text for task {i}: look at the component, change it, and write down what was done.\n"
    )


def build_project(workdir: str, size: int) -> tuple[str, str]:
    """(project dir, task root) with `size` plain task files in SUBFOLDERS folders and a src/ to edit."""
    project = os.path.join(workdir, "project")
    root = os.path.join(project, "tasks")
    for sub in range(SUBFOLDERS):
        os.makedirs(os.path.join(root, f"area-{sub}"))
    for i in range(size):
        with open(os.path.join(root, f"area-{i % SUBFOLDERS}", f"task-{i:06d}.md"), "w", encoding="utf-8") as f:
            f.write(task_text(i))
    os.makedirs(os.path.join(project, "src"))
    return project, root


def payload(event: str, who: dict, project: str, **extra: object) -> bytes:
    data = {"session_id": who["session_id"], "transcript_path": os.path.join(project, "transcript.jsonl"),
            "cwd": project, "permission_mode": "bypassPermissions", "hook_event_name": event,
            "agent_id": who["agent_id"], "agent_type": who["agent_type"], "tool_use_id": "toolu_004_0",
            **extra}  # fmt: skip
    return json.dumps(data).encode()


def write_input(project: str) -> dict:
    return {"file_path": os.path.join(project, "src", "bench.py"), "content": "print('hello')\n" * 20}


def claim_and_bind(project: str, root: str, env: dict) -> dict:
    """Claim CLAIMED with the CLI, then bind it to WORKER by running the hook on the claim tool's PostToolUse."""
    proc = subprocess.run([sys.executable, "-m", "hypervisor", "claim", CLAIMED, "--caller", "bench-supervisor",
                           "--tasks", root, "--json"],
                          cwd=project, env=env, capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"claim failed ({proc.returncode}): {proc.stderr}")
    claim = json.loads(proc.stdout)
    response = json.dumps({k: claim[k] for k in ("id", "title", "status", "claim_token", "lease_expires_at")})
    stdin = payload("PostToolUse", WORKER, project, tool_name=CLAIM_TOOL, tool_input={},
                    tool_response=response, mcp_server={"name": "plugin:hypervisor:task_manager", "source": "plugin"})
    bind = subprocess.run(HOOK, input=stdin, cwd=REPO, env=env, capture_output=True)
    workers = os.path.join(root, ".hypervisor", "workers")
    if bind.returncode != 0 or bind.stdout or bind.stderr or not os.listdir(workers):
        raise RuntimeError(f"binding the claim failed: {bind}")
    return claim


# -- the measurements ---------------------------------------------------------------------------------------------
def commands(project: str) -> dict[str, tuple[list[str], bytes, str]]:
    """variant -> (argv, stdin, what stdout must be: '' or 'deny')."""
    return {
        "bare": ([sys.executable, "-c", "pass"], b"", ""),
        "bare_S": ([sys.executable, "-S", "-c", "pass"], b"", ""),
        "allowed": (HOOK, payload("PreToolUse", WORKER, project, tool_name="Write", tool_input=write_input(project)),
                    ""),
        "denied": (HOOK, payload("PreToolUse", STRANGER, project, tool_name="Write", tool_input=write_input(project)),
                   "deny"),
        "post": (HOOK, payload("PostToolUse", WORKER, project, tool_name="Write", tool_input=write_input(project),
                               tool_response={"type": "create", "filePath": write_input(project)["file_path"]},
                               duration_ms=3), ""),
    }  # fmt: skip


def timed(variant: str, cmd: tuple[list[str], bytes, str], env: dict) -> float:
    """Wall seconds of one subprocess; fails loudly if it did not give the answer it must."""
    argv, stdin, want = cmd
    start = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, cwd=REPO, env=env, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    if want == "deny":
        try:
            ok = json.loads(proc.stdout)["hookSpecificOutput"]["permissionDecision"] == "deny"
        except (ValueError, KeyError, TypeError):
            ok = False
    else:
        ok = not proc.stdout
    if proc.returncode != 0 or proc.stderr or not ok:
        raise RuntimeError(f"{variant}: exit {proc.returncode}, stdout {proc.stdout[:300]!r}, "
                           f"stderr {proc.stderr[:300]!r}")
    return seconds


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]  # nearest rank


def journal_lines(root: str, claim: dict) -> int:
    path = os.path.join(root, ".hypervisor", "journal", f"{claim['id']}.{claim['claim_token'][:16]}.jsonl")
    try:
        with open(path, encoding="utf-8") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0


def lease_expires(root: str, claim_id: str) -> float:
    with open(os.path.join(root, ".hypervisor", "claims", f"{claim_id}.json"), encoding="utf-8") as handle:
        return json.load(handle)["lease_expires_at"]


# -- output -------------------------------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def table(report: dict) -> str:
    rows = report["variants"]
    lines = [
        f"hook benchmark: {report['tasks']} tasks, one claimed ({CLAIMED}, scope {SCOPE}) and bound to a worker; "
        f"{report['runs']} runs per variant, interleaved round-robin after one warm-up each; {report['cpus']} CPUs",
        f"python {report['python']} ({report['executable']}); bytecode cached under PYTHONPYCACHEPREFIX (a temp dir)",
        f"src sha256 {report['src_sha256']}"
        + ("  WARNING: src/ changed during the run" if report["src_changed_during_run"] else "")
        + f"; total runtime {report['total_runtime_s']:.0f} s; "
        f"load average (1 min) at start {report['loadavg_1m_at_start']:.1f}, at end {report['loadavg_1m_at_end']:.1f}; "
        f"other cpu {report['foreign_cpu']:.2f}",
        "",
        f"{'variant':<28} {'median ms':>9} {'p90 ms':>8} {'min ms':>7}   {'/ bare':>7} {'p90/bare':>8}   "
        f"{'/ bare -S':>9}",
    ]  # fmt: skip
    for name in VARIANTS:
        row = rows[name]
        lines.append(
            f"{LABELS[name]:<28} {ms(row['median_s']):>9} {ms(row['p90_s']):>8} {ms(row['min_s']):>7}   "
            f"{row['ratio_bare']:>6.2f}x {row['ratio_bare_p90']:>7.2f}x   {row['ratio_bare_S']:>8.2f}x"
        )
    target = report["target"]
    lines += [
        "",
        f"target: allowed and denied within {TARGET_RATIO:g}x of bare `python3 -c pass` (medians): allowed "
        f"{target['allowed']:.2f}x, denied {target['denied']:.2f}x -> {'MEETS' if target['meets'] else 'MISSES'}",
        f"check: {report['check']['journal_lines']} journal lines after {report['check']['post_calls']} post calls "
        f"(want equal); lease renewed by the post calls: {report['check']['lease_renewed']}",
        "'/ bare' is median / median of `python3 -c pass`; 'p90/bare' compares the p90s. 'other cpu': CPU-seconds per",
        f"second used by other processes meanwhile ({report['cpus']} CPUs); above ~0.5 the figures are disturbed.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10000, metavar="N", help="tasks in the store (default 10000)")
    parser.add_argument("--runs", type=int, default=40, metavar="N", help="timed runs per variant (default 40)")
    parser.add_argument("--json", action="store_true", help="print a JSON object on stdout (the table goes to stderr)")
    args = parser.parse_args()
    began = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="hypervisor-bench-hooks-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERVISOR_", "CLAUDE_", "GEMINI_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(workdir, "pycache")
    fingerprint = source_fingerprint()
    load_at_start = os.getloadavg()[0]
    try:
        print(f"[hooks] writing {args.tasks} tasks ...", file=sys.stderr, flush=True)
        project, root = build_project(workdir, args.tasks)
        env["CLAUDE_PROJECT_DIR"] = project  # as Claude Code sets it for hooks
        claim = claim_and_bind(project, root, env)
        cmds = commands(project)
        for name in VARIANTS:  # warm-up: bytecode written to the cache, page cache warm
            timed(name, cmds[name], env)
        journal_before, lease_before = journal_lines(root, claim), lease_expires(root, claim["id"])
        time.sleep(1.1)  # leases are whole seconds apart at most: let a renewal show
        samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
        load = ForeignLoad()
        for run in range(args.runs):
            if run % 10 == 0:
                print(f"[hooks] run {run + 1}/{args.runs}", file=sys.stderr, flush=True)
            order = VARIANTS[run % len(VARIANTS):] + VARIANTS[:run % len(VARIANTS)]  # rotate who goes first
            for name in order:
                samples[name].append(timed(name, cmds[name], env))
        foreign = load.stop()
        bare, bare_s, bare_p90 = (statistics.median(samples["bare"]), statistics.median(samples["bare_S"]),
                                  p90(samples["bare"]))  # fmt: skip
        variants = {}
        for name in VARIANTS:
            median = statistics.median(samples[name])
            variants[name] = {
                "command": LABELS[name], "median_s": median, "p90_s": p90(samples[name]), "min_s": min(samples[name]),
                "ratio_bare": median / bare, "ratio_bare_p90": p90(samples[name]) / bare_p90,
                "ratio_bare_S": median / bare_s, "samples_s": samples[name],
            }  # fmt: skip
        report = {
            "benchmark": "hooks",
            "tasks": args.tasks,
            "runs": args.runs,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "hook_argv": HOOK,
            "src_sha256": fingerprint,
            "src_changed_during_run": source_fingerprint() != fingerprint,
            "loadavg_1m_at_start": load_at_start,
            "foreign_cpu": foreign,
            "variants": variants,
            "target": {
                "max_ratio": TARGET_RATIO,
                "allowed": variants["allowed"]["ratio_bare"],
                "denied": variants["denied"]["ratio_bare"],
                "meets": max(variants["allowed"]["ratio_bare"], variants["denied"]["ratio_bare"]) <= TARGET_RATIO,
            },
            "check": {
                "post_calls": args.runs,
                "journal_lines": journal_lines(root, claim) - journal_before,
                "lease_renewed": lease_expires(root, claim["id"]) > lease_before,
            },
        }
        report["total_runtime_s"] = time.monotonic() - began
        report["loadavg_1m_at_end"] = os.getloadavg()[0]
        emit(table(report), report, args.json)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
