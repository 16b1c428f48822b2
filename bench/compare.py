"""bench/list.py and bench/claims.py on the code of two commits, alternately in one run: each figure new/old.

    python bench/compare.py BEFORE [--rounds 3]

BEFORE's tree is checked out into a temporary folder and its benches run with its own src/ first on the path
(the dependencies are this interpreter's). Rounds alternate old, new, old, new ... so drift hits both alike.
Figures compared: `hypervisor list --status active` as a whole process and in-process, each over the bare walk of
the same run (bench/list.py), and claims per second of the file backend with 1 and 4 processes (bench/claims.py).
Prints the median of each figure per side and new/old; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def interpreter(checkout: str, folder: str) -> tuple[str, dict]:
    """A python (and a `hypervisor` command beside it, which the benches look for) running `checkout`'s src/ with
    this interpreter's dependencies: the same for both sides, so only the code differs."""
    bin_dir = os.path.join(folder, "bin")
    os.makedirs(bin_dir)
    python = os.path.join(bin_dir, "python")
    os.symlink(getattr(sys, "_base_executable", sys.executable), python)
    with open(os.path.join(bin_dir, "hypervisor"), "w") as handle:
        handle.write(f'#!{python}\nimport runpy\nrunpy.run_module("hypervisor", run_name="__main__")\n')
    os.chmod(os.path.join(bin_dir, "hypervisor"), 0o755)
    site = [path for path in sys.path if path.endswith("site-packages")]
    return python, dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(checkout, "src"), *site]))


def run_bench(side: tuple[str, str, dict], script: str, args: list[str]) -> dict:
    checkout, python, env = side
    done = subprocess.run([python, os.path.join(checkout, "bench", script), *args, "--json"], cwd=checkout,
                          env=env, capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout)


def figures(side: tuple[str, str, dict], size: int, tasks: int) -> dict[str, float]:
    listed = run_bench(side, "list.py", ["--sizes", str(size), "--reps", "5"])["sizes"][0]["median_s"]
    claims = run_bench(side, "claims.py", ["--tasks", str(tasks), "--procs", "1,4", "--no-redis",
                                               "--seed-repeat", "1"])["rows"]  # fmt: skip
    found = {
        f"list {size}, process / bare walk": listed["hv_sub"] / listed["bare_sub"],
        f"list {size}, in-process / bare walk": listed["hv_inproc"] / listed["bare_inproc"],
    }
    for row in claims:
        found[f"claims/s, file, {row['procs']} process(es)"] = row["hypervisor"]["median_claims_per_s"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="the commit to compare with (its bench/ scripts must take the same options)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=10000, help="tasks for bench/list.py (default 10000)")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks for bench/claims.py (default 1000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-before-") as old:
        archive = subprocess.run(["git", "-C", REPO, "archive", args.before], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        sides = {name: (checkout, *interpreter(checkout, os.path.join(old, f".bench-{name}")))
                 for name, checkout in (("old", old), ("new", REPO))}  # fmt: skip
        samples: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
        for _ in range(args.rounds):
            for name, side in sides.items():
                for figure, value in figures(side, args.size, args.tasks).items():
                    samples[name].setdefault(figure, []).append(value)
    print(f"{args.before} (old) against the working tree (new), {args.rounds} alternating rounds; medians")
    print(f"{'figure':<42}{'old':>10}{'new':>10}{'new/old':>9}")
    for name, values in samples["new"].items():
        before, after = statistics.median(samples["old"][name]), statistics.median(values)
        print(f"{name:<42}{before:>10.2f}{after:>10.2f}{after / before:>9.3f}")


if __name__ == "__main__":
    main()
