"""Helpers shared by the benchmarks: how busy the rest of the machine was, and which version of src/ ran."""

from __future__ import annotations

import json
import os
import sys
import time


class ForeignLoad:
    """CPU-seconds per second used by processes other than this one and its waited-for children, over a span.

    Busy time from /proc/stat minus our own rusage; a few tenths is noise, 1+ means something else was running.
    `helpers`: pids of servers the benchmark started and still runs (a redis-server); their CPU counts as ours.
    """

    def __init__(self, helpers: tuple[int, ...] = ()) -> None:
        self.helpers = helpers
        self.helper_cpu = 0.0
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float, float]:
        import resource

        try:
            with open("/proc/stat", encoding="ascii") as handle:
                fields = [int(x) for x in handle.readline().split()[1:]]
            busy = (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")  # user nice system irq softirq steal
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        ours = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                   for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))  # fmt: skip
        return time.monotonic(), busy, ours, sum(process_cpu(pid) for pid in self.helpers)

    def stop(self) -> float:
        """Foreign CPU-s per second since the start; also sets `helper_cpu`, the helpers' CPU-s per second."""
        end = self._sample()
        wall = end[0] - self.start[0]
        if wall <= 0:
            return 0.0
        helpers = end[3] - self.start[3]
        self.helper_cpu = helpers / wall
        return max(0.0, (end[1] - self.start[1]) - (end[2] - self.start[2]) - helpers) / wall


def process_cpu(pid: int) -> float:
    """CPU-seconds (user + system) a running process has used so far, from /proc/<pid>/stat; 0.0 if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()  # the command name in (...) may contain spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def source_fingerprint() -> str:
    """sha256 (12 hex) of the hypervisor package's .py files, to tie the figures to one version of src/."""
    import hashlib

    import hypervisor

    package = os.path.dirname(hypervisor.__file__)
    digest = hashlib.sha256()
    for name in sorted(os.listdir(package)):
        if name.endswith(".py"):
            with open(os.path.join(package, name), "rb") as handle:
                digest.update(name.encode() + b"\0" + handle.read())
    return digest.hexdigest()[:12]


def emit(text: str, report: dict, as_json: bool) -> None:
    """The table on stdout; with --json the JSON report on stdout and the table on stderr."""
    if as_json:
        print(text, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(text)
