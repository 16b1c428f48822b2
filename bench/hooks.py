"""Wall time of the tool hook (`python3 -S hooks/tool_hook.py`, as hooks.json runs it) on the file and Redis backends, beside a bare interpreter start.

Twelve variants (nine with --no-redis), interleaved round-robin in one run so drift hits them alike, each a fresh
subprocess:
  bare        `python3 -c pass` (site-packages processed: what any Python tool costs to start)
  bare -S     `python3 -S -c pass` (the floor the hook can reach)
  allowed     PreToolUse Write inside the claimed task's scope, by the worker bound to that claim
  denied      PreToolUse Write by a hypervisor:worker that holds no claim
  post        PostToolUse Write by the holder (lease renewal under the task lock + one journal line)
  ..., DONTWRITE  the same three with PYTHONDONTWRITEBYTECODE=1 in the hook's environment (containers, CI), on a
              copy of the plugin of their own: its .pyc files are the ones the hook writes itself, once
  ..., no .pyc    the allowed edit where no .pyc can exist (the copy's __pycache__ is a file): every module
              compiled from source on every call, what PYTHONDONTWRITEBYTECODE cost before the hooks wrote bytecode
  ..., redis  the three with HYPERVISOR_BACKEND on a private redis-server this script starts (127.0.0.1,
              persisting nothing, a fresh namespace): the claim read, and renewed by a compare-and-set script, over
              the hooks' stdlib RESP client; bindings and the journal stay on local disk
on a store of --tasks tasks per backend with one claimed task, its claim bound to the worker by the hook itself.
The hooks run from fresh copies of hooks/ and src/hypervisor (no .pyc at the start), so no earlier run's cache
counts and the repository is not written to. The target is allowed and denied within 1.5x of bare
`python3 -c pass`, with and without PYTHONDONTWRITEBYTECODE; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from typing import NamedTuple

from benchlib import ForeignLoad, RedisServer, emit, private_redis, source_fingerprint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBFOLDERS = 10
TARGET_RATIO = 1.5
CLAIMED = "task-000000"
SCOPE = "src/**"
WORKER = {"session_id": "bench-session-6d1683e8", "agent_id": "a033b0a6f11c22354", "agent_type": "hypervisor:worker"}
STRANGER = {"session_id": "bench-session-6d1683e8", "agent_id": "b99f00d000000000", "agent_type": "hypervisor:worker"}
CLAIM_TOOL = "mcp__plugin_hypervisor_task_manager__claim_next_task"
REDIS_VARIANTS = ("allowed_redis", "denied_redis", "post_redis")
DONTWRITE_VARIANTS = ("allowed_dontwrite", "denied_dontwrite", "post_dontwrite")
LABELS = {"bare": "python3 -c pass", "bare_S": "python3 -S -c pass", "allowed": "hook: allowed edit",
          "denied": "hook: denied edit", "post": "hook: post (renew+journal)",
          "allowed_dontwrite": "hook, DONTWRITE: allowed edit", "denied_dontwrite": "hook, DONTWRITE: denied edit",
          "post_dontwrite": "hook, DONTWRITE: post", "allowed_source": "hook, no .pyc: allowed edit",
          "allowed_redis": "hook, redis: allowed edit", "denied_redis": "hook, redis: denied edit",
          "post_redis": "hook, redis: post (renew+journal)"}  # fmt: skip
# A variant's twin: the same call in the plain setting (file backend, bytecode written as usual): the '/ twin' column.
TWINS = {**{name: name.rsplit("_", 1)[0] for name in REDIS_VARIANTS + DONTWRITE_VARIANTS}, "allowed_source": "allowed"}


class Command(NamedTuple):
    argv: list[str]
    stdin: bytes
    want: str  # what stdout must be: '' or 'deny'
    env: dict
    cwd: str


class Plugin(NamedTuple):
    """A copy of the plugin's hook script and package, and the argv that runs its hook as hooks.json does."""

    root: str
    hook: list[str]

    @property
    def pycaches(self) -> list[str]:
        """The __pycache__ of the package and of each of its subpackages."""
        package = os.path.join(self.root, "src", "hypervisor")
        return [os.path.join(folder, "__pycache__") for folder, subfolders, names in os.walk(package)
                if "__init__.py" in names]  # fmt: skip


def copy_plugin(folder: str, pycache_possible: bool = True) -> Plugin:
    """hooks/tool_hook.py and src/hypervisor as an install has them: sources only, no bytecode yet.

    `pycache_possible=False`: a file named __pycache__ stands where each folder would be, so no .pyc is ever read
    or written (the import system and the hook both fail on it quietly)."""
    os.makedirs(os.path.join(folder, "hooks"))
    shutil.copy(os.path.join(REPO, "hooks", "tool_hook.py"), os.path.join(folder, "hooks"))
    shutil.copytree(os.path.join(REPO, "src", "hypervisor"), os.path.join(folder, "src", "hypervisor"),
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    plugin = Plugin(folder, [sys.executable, "-S", os.path.join(folder, "hooks", "tool_hook.py")])
    if not pycache_possible:
        for pycache in plugin.pycaches:
            with open(pycache, "w", encoding="utf-8") as handle:
                handle.write("not a folder: no bytecode here\n")
    return plugin


def hash_checked_pycs(plugin: Plugin) -> int:
    """How many hash-checked .pyc files (PEP 552 flags 0b11) the copy's __pycache__ folders hold."""
    count = 0
    for pycache in plugin.pycaches:
        if not os.path.isdir(pycache):
            continue
        for name in os.listdir(pycache):
            with open(os.path.join(pycache, name), "rb") as handle:
                count += name.endswith(".pyc") and int.from_bytes(handle.read(16)[4:8], "little") == 0b11
    return count


class Store(NamedTuple):
    """One backend's project: its own copy of the store, the hook environment naming the backend, the claim."""

    project: str
    root: str
    env: dict
    claim: dict


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


def prepare(folder: str, size: int, env: dict, spec: str, plugin: Plugin) -> Store:
    """A store under `folder` whose CLAIMED task is claimed on backend `spec` and bound to WORKER."""
    project, root = build_project(folder, size)
    env = {**env, "CLAUDE_PROJECT_DIR": project}  # as Claude Code sets it for hooks
    if spec != "file":
        env["HYPERVISOR_BACKEND"] = spec  # the claim command and every hook run then use the same backend
    return Store(project, root, env, claim_and_bind(project, root, env, plugin))


def claim_and_bind(project: str, root: str, env: dict, plugin: Plugin) -> dict:
    """Claim CLAIMED with the CLI, then bind it to WORKER by running the hook on the claim tool's PostToolUse."""
    proc = subprocess.run([sys.executable, "-m", "hypervisor", "claim", CLAIMED, "--caller", "bench-supervisor",
                           "--tasks", root, "--json"],
                          cwd=project, env={**env, "PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True,
                          text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"claim failed ({proc.returncode}): {proc.stderr}")
    claim = json.loads(proc.stdout)
    response = json.dumps({k: claim[k] for k in ("id", "title", "status", "claim_token", "lease_expires_at")})
    stdin = payload(
        "PostToolUse",
        WORKER,
        project,
        tool_name=CLAIM_TOOL,
        tool_input={},
        tool_response=response,
        mcp_server={"name": "plugin:hypervisor:task_manager", "source": "plugin"},
    )
    bind = subprocess.run(plugin.hook, input=stdin, cwd=project, env=env, capture_output=True)
    workers = os.path.join(root, ".hypervisor", "workers")
    if bind.returncode != 0 or bind.stdout or bind.stderr or not os.listdir(workers):
        raise RuntimeError(f"binding the claim failed: {bind}")
    return claim


# -- the measurements ---------------------------------------------------------------------------------------------
def commands(stores: dict[str, Store], plugins: dict[str, Plugin]) -> dict[str, Command]:
    """variant -> its Command: the bare interpreters, then the hook variants on each backend's store."""
    file = stores["file"]
    found = {"bare": Command([sys.executable, "-c", "pass"], b"", "", file.env, file.project),
             "bare_S": Command([sys.executable, "-S", "-c", "pass"], b"", "", file.env, file.project)}  # fmt: skip
    inputs = hook_inputs(file.project)
    for name, (stdin, want) in inputs.items():
        found[name] = Command(plugins["plain"].hook, stdin, want, file.env, file.project)
    dont_write = {**file.env, "PYTHONDONTWRITEBYTECODE": "1"}
    for name, (stdin, want) in inputs.items():
        found[name + "_dontwrite"] = Command(plugins["dontwrite"].hook, stdin, want, dont_write, file.project)
    stdin, want = inputs["allowed"]
    found["allowed_source"] = Command(plugins["source"].hook, stdin, want, dont_write, file.project)
    for backend, store in stores.items():
        if backend != "file":
            for name, (stdin, want) in hook_inputs(store.project).items():
                found[f"{name}_{backend}"] = Command(plugins["plain"].hook, stdin, want, store.env, store.project)
    return found


def hook_inputs(project: str) -> dict[str, tuple[bytes, str]]:
    """hook variant -> (stdin, what stdout must be: '' or 'deny')."""
    return {
        "allowed": (payload("PreToolUse", WORKER, project, tool_name="Write", tool_input=write_input(project)), ""),
        "denied": (payload("PreToolUse", STRANGER, project, tool_name="Write", tool_input=write_input(project)),
                   "deny"),
        "post": (payload("PostToolUse", WORKER, project, tool_name="Write", tool_input=write_input(project),
                         tool_response={"type": "create", "filePath": write_input(project)["file_path"]},
                         duration_ms=3), ""),
    }  # fmt: skip


def timed(variant: str, cmd: Command) -> float:
    """Wall seconds of one subprocess; fails loudly if it did not give the answer it must."""
    argv, stdin, want, env, cwd = cmd
    start = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, cwd=cwd, env=env, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    if want == "deny":
        try:
            ok = json.loads(proc.stdout)["hookSpecificOutput"]["permissionDecision"] == "deny"
        except (ValueError, KeyError, TypeError):
            ok = False
    else:
        ok = not proc.stdout
    if proc.returncode != 0 or proc.stderr or not ok:
        raise RuntimeError(
            f"{variant}: exit {proc.returncode}, stdout {proc.stdout[:300]!r}, stderr {proc.stderr[:300]!r}"
        )
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


def claim_path(root: str) -> str:
    return os.path.join(root, ".hypervisor", "claims", f"{CLAIMED}.json")


def lease_expires(root: str) -> float:
    with open(claim_path(root), encoding="utf-8") as handle:
        return json.load(handle)["lease_expires_at"]


def lease_pttl(server: RedisServer, namespace: str) -> int:
    """Milliseconds the lease key has left on the server (the server's TTL is the Redis lease); -2 if it is gone."""
    import redis  # the benchmark itself may take redis-py's import time; the hooks never import it

    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        return client.pttl(f"{namespace}:lease:{CLAIMED}")
    finally:
        client.close()


# -- output -------------------------------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def table(report: dict) -> str:
    rows, redis = report["variants"], report["redis"]
    lines = [
        f"hook benchmark: {report['tasks']} tasks, one claimed ({CLAIMED}, scope {SCOPE}) and bound to a worker; "
        f"{report['runs']} runs per variant, interleaved round-robin after one warm-up each; {report['cpus']} CPUs",
        f"python {report['python']} ({report['executable']}); the hooks run from fresh copies of the plugin "
        "(no .pyc at the start)",
        (f"Redis rows: a private redis-server {redis['version']} on {redis['url']}, persisting nothing, namespace "
         f"{redis['namespace']}, a store of {report['tasks']} tasks of their own" if redis
         else "Redis rows: left out (--no-redis)"),
        f"src sha256 {report['src_sha256']}"
        + ("  WARNING: src/ changed during the run" if report["src_changed_during_run"] else "")
        + f"; total runtime {report['total_runtime_s']:.0f} s; "
        f"load average (1 min) at start {report['loadavg_1m_at_start']:.1f}, at end {report['loadavg_1m_at_end']:.1f}; "
        f"other cpu {report['foreign_cpu']:.2f}" + (f"; redis-server cpu {redis['server_cpu']:.2f}" if redis else ""),
        "",
        f"{'variant':<34} {'median ms':>9} {'p90 ms':>8} {'min ms':>7} {'1st ms':>7}   {'/ bare':>7} {'p90/bare':>8}   "
        f"{'/ bare -S':>9}   {'/ twin':>7}",
    ]  # fmt: skip
    for name, row in rows.items():
        lines.append(
            f"{LABELS[name]:<34} {ms(row['median_s']):>9} {ms(row['p90_s']):>8} {ms(row['min_s']):>7} "
            f"{ms(row['first_s']):>7}   {row['ratio_bare']:>6.2f}x {row['ratio_bare_p90']:>7.2f}x   "
            f"{row['ratio_bare_S']:>8.2f}x" + (f"   {row['ratio_twin']:>6.2f}x" if "ratio_twin" in row else "")
        )
    lines.append("")
    for label, suffix in (("", ""), (", DONTWRITE", "_dontwrite")) + (((", redis", "_redis"),) if redis else ()):
        target = report["target" + suffix]
        lines.append(
            f"target{label}: allowed and denied within {TARGET_RATIO:g}x of bare `python3 -c pass` (medians): allowed "
            f"{target['allowed']:.2f}x, denied {target['denied']:.2f}x -> {'MEETS' if target['meets'] else 'MISSES'}"
        )  # fmt: skip
    for label, suffix in (("", ""), (", redis", "_redis")) if redis else (("", ""),):
        check = report["check" + suffix]
        lines.append(f"check{label}: {check['journal_lines']} journal lines after {check['post_calls']} post calls "
                     f"(want equal); lease renewed by the post calls: {check['lease_renewed']}")  # fmt: skip
    if redis:
        check = report["check_redis"]
        lines.append(
            f"check, redis: lease key PTTL {check['lease_pttl_before_ms']:,} ms before the runs, "
            f"{check['lease_pttl_after_ms']:,} ms after; claim only on the server: {check['claim_only_on_server']}"
        )
    bytecode = report["check_bytecode"]
    lines.append(
        f"check, bytecode: the DONTWRITE copy holds {bytecode['dontwrite_pycs']} hash-checked .pyc files, all written "
        f"by its own hooks (want > 0); the no-.pyc copy {bytecode['source_pycs']} (want 0)"
    )
    lines += [
        "'/ bare' is median / median of `python3 -c pass`; 'p90/bare' compares the p90s. '/ twin': median / median of",
        "the same call in the plain rows (file backend, bytecode written as usual). '1st ms': the warm-up call; the",
        "first DONTWRITE call is the one that compiles every module and writes its .pyc. 'other cpu': CPU-seconds per",
        f"second used by other processes meanwhile ({report['cpus']} CPUs); above ~0.5 the figures are disturbed.",
    ]
    if redis:
        lines += [
            "'redis-server cpu': CPU-seconds per second the private server used meanwhile (not counted in 'other",
            "cpu'). A denied edit by a worker without a binding is refused before any backend is asked: its Redis row",
            "opens no connection.",
        ]
    return "\n".join(lines)


# -- the run ------------------------------------------------------------------------------------------------------
def measure(args: argparse.Namespace, workdir: str, env: dict, server: RedisServer | None) -> dict:
    """Prepare a store per backend, time every variant interleaved, check the post calls did their work."""
    namespace = f"bench{secrets.token_hex(6)}"  # fresh: no claims from an earlier run on the same server
    specs = {"file": "file", **({"redis": f"{server.url}?namespace={namespace}"} if server else {})}
    print(f"[hooks] writing {args.tasks} tasks per backend ({', '.join(specs)}) ...", file=sys.stderr, flush=True)
    plugins = {"plain": copy_plugin(os.path.join(workdir, "plugin")),
               "dontwrite": copy_plugin(os.path.join(workdir, "plugin-dontwrite")),
               "source": copy_plugin(os.path.join(workdir, "plugin-source"), pycache_possible=False)}  # fmt: skip
    stores = {name: prepare(os.path.join(workdir, name), args.tasks, env, spec, plugins["plain"])
              for name, spec in specs.items()}  # fmt: skip
    cmds = commands(stores, plugins)
    names = tuple(cmds)
    first = {name: timed(name, cmds[name]) for name in names}  # warm-up: the .pyc files written, page cache warm
    bytecode = {"dontwrite_pycs": hash_checked_pycs(plugins["dontwrite"]),
                "source_pycs": hash_checked_pycs(plugins["source"])}  # fmt: skip
    time.sleep(1.1)  # let a renewal show: file leases are whole seconds apart at most, a Redis lease's PTTL runs down
    before = marks(stores, server, namespace)
    samples: dict[str, list[float]] = {name: [] for name in names}
    load = ForeignLoad(helpers=(server.pid,) if server else ())
    for run in range(args.runs):
        if run % 10 == 0:
            print(f"[hooks] run {run + 1}/{args.runs}", file=sys.stderr, flush=True)
        order = names[run % len(names) :] + names[: run % len(names)]  # rotate who goes first
        for name in order:
            samples[name].append(timed(name, cmds[name]))
    foreign = load.stop()
    variants = summarize(samples, first)
    checks = compare(before, marks(stores, server, namespace), args.runs, stores)
    return {
        "benchmark": "hooks",
        "tasks": args.tasks,
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "hook_argv": plugins["plain"].hook,
        "backends": list(specs),
        "redis": (
            {"version": server.version, "url": server.url, "namespace": namespace, "server_cpu": load.helper_cpu}
            if server
            else None
        ),  # fmt: skip
        "foreign_cpu": foreign,
        "variants": variants,
        "target": target(variants, ""),
        "target_dontwrite": target(variants, "_dontwrite"),
        "target_redis": target(variants, "_redis") if server else None,
        "check": checks["file"],
        "check_redis": checks.get("redis"),
        "check_bytecode": bytecode,
    }


def marks(stores: dict[str, Store], server: RedisServer | None, namespace: str) -> dict[str, dict]:
    """Per backend, what a post call moves: the journal's lines and the lease (file: its expiry; Redis: its PTTL)."""
    found = {backend: {"journal_lines": journal_lines(store.root, store.claim)} for backend, store in stores.items()}
    found["file"]["lease"] = lease_expires(stores["file"].root)
    if server:
        found["redis"]["lease"] = lease_pttl(server, namespace)
    return found


def compare(before: dict[str, dict], after: dict[str, dict], runs: int, stores: dict[str, Store]) -> dict[str, dict]:
    """The checks per backend: one journal line per post call, the lease renewed (and Redis: held on the server)."""
    posts = {"file": 2}  # the file store takes the post calls of the plain and of the DONTWRITE rows
    checks = {backend: {"post_calls": runs * posts.get(backend, 1),
                        "journal_lines": after[backend]["journal_lines"] - before[backend]["journal_lines"],
                        "lease_renewed": after[backend]["lease"] > before[backend]["lease"]}
              for backend in before}  # fmt: skip
    if "redis" in checks:
        on_server = before["redis"]["lease"] > 0 and not os.path.exists(claim_path(stores["redis"].root))
        checks["redis"].update(
            lease_pttl_before_ms=before["redis"]["lease"],
            lease_pttl_after_ms=after["redis"]["lease"],
            claim_only_on_server=on_server,
        )
    return checks


def summarize(samples: dict[str, list[float]], first: dict[str, float]) -> dict[str, dict]:
    bare, bare_s, bare_p90 = (statistics.median(samples["bare"]), statistics.median(samples["bare_S"]),
                              p90(samples["bare"]))  # fmt: skip
    variants = {}
    for name, values in samples.items():
        median = statistics.median(values)
        variants[name] = {
            "command": LABELS[name], "median_s": median, "p90_s": p90(values), "min_s": min(values),
            "first_s": first[name],
            "ratio_bare": median / bare, "ratio_bare_p90": p90(values) / bare_p90, "ratio_bare_S": median / bare_s,
        }  # fmt: skip
        if name in TWINS:
            variants[name]["ratio_twin"] = median / statistics.median(samples[TWINS[name]])
        variants[name]["samples_s"] = values
    return variants


def target(variants: dict[str, dict], suffix: str) -> dict:
    allowed, denied = variants["allowed" + suffix]["ratio_bare"], variants["denied" + suffix]["ratio_bare"]
    meets = max(allowed, denied) <= TARGET_RATIO
    return {"max_ratio": TARGET_RATIO, "allowed": allowed, "denied": denied, "meets": meets}


def failed_checks(report: dict) -> list[str]:
    """What the checks say went wrong: then the timings are not of the work their rows name."""
    problems = []
    for key in ("check", "check_redis"):
        check = report[key]
        if check is None:
            continue
        if check["journal_lines"] != check["post_calls"]:
            problems.append(f"{key}: {check['journal_lines']} journal lines after {check['post_calls']} post calls")
        problems += [f"{key}: {name} is false" for name in ("lease_renewed", "claim_only_on_server")
                     if check.get(name) is False]  # fmt: skip
    bytecode = report["check_bytecode"]
    if not bytecode["dontwrite_pycs"] or bytecode["source_pycs"]:
        problems.append(f"check_bytecode: {bytecode}: the DONTWRITE rows did not run from the hooks' own .pyc files, "
                        "or the no-.pyc row did")  # fmt: skip
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tasks", type=int, default=10000, metavar="N", help="tasks in each backend's store (default 10000)"
    )
    parser.add_argument("--runs", type=int, default=40, metavar="N", help="timed runs per variant (default 40)")
    parser.add_argument(
        "--no-redis",
        dest="redis",
        action="store_false",
        help="leave out the Redis rows (by default a private redis-server is started for them)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object on stdout (the table goes to stderr)")
    args = parser.parse_args()  # fmt: skip
    began = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="hypervisor-bench-hooks-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERVISOR_", "CLAUDE_", "GEMINI_"))}
    for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"):  # the rows set these themselves
        env.pop(name, None)
    fingerprint = source_fingerprint()
    load_at_start = os.getloadavg()[0]
    try:
        with private_redis(os.path.join(workdir, "redis-server"), "hooks") if args.redis else nullcontext() as server:
            report = measure(args, workdir, env, server)
        report.update(src_sha256=fingerprint, src_changed_during_run=source_fingerprint() != fingerprint,
                      loadavg_1m_at_start=load_at_start, loadavg_1m_at_end=os.getloadavg()[0],
                      total_runtime_s=time.monotonic() - began)  # fmt: skip
        emit(table(report), report, args.json)
        problems = failed_checks(report)
        if problems:
            raise SystemExit("hooks benchmark: check failed, the timings are not of real work: " + "; ".join(problems))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
