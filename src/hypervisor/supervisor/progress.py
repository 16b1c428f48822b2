"""How `hypervisor run` shows its progress: a live rich table on a terminal, one plain line per event otherwise."""

from __future__ import annotations

import sys
import time

from ..core.timeutil import humanize
from .loop import NullProgress, Supervisor
from .processes import Attempt
from .runs import TaskEntry, attempts_text, counts_text, duration_text, run_line


def _elapsed(attempt: Attempt) -> str:
    return humanize(time.monotonic() - attempt.started)


def _finished_text(attempt: Attempt, entry: TaskEntry, retry: bool, max_attempts: int) -> str:
    text = entry.text if len(entry.text) <= 160 else entry.text[:157] + "..."
    label = "retry" if retry else entry.status
    took = duration_text(time.monotonic() - attempt.started)
    counted = attempts_text(entry.attempts, max_attempts)
    if entry.attempts < attempt.number:  # triage's claims, and claims given back unused, do not count
        counted = f"not counted, {counted}"
    return f"{attempt.worker} {attempt.task_id} {label} after {took} ({counted}): {text}"


class PlainProgress(NullProgress):
    """One line per start, finish and note, on stderr: for logs, pipes and CI."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.max_attempts = 0

    def _say(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", file=self.stream, flush=True)

    def begin(self, supervisor: Supervisor) -> None:
        self.max_attempts = supervisor.max_attempts
        report = supervisor.preflight_report
        ready, waiting = len(report.get("ready", [])), len(report.get("skipped", {}).get("blocked_deps", []))
        batch = f"{ready} task(s) ready" + (f", {waiting} waiting on dependencies (they run if those finish in this "
                                            "run)" if waiting else "")  # fmt: skip
        self._say(f"run {supervisor.run_id}: {batch}; {supervisor.options.workers} worker(s), agent "
                  f"{supervisor.agent.name}; logs in {supervisor.folder.path}")  # fmt: skip

    def started(self, attempt: Attempt) -> None:
        self._say(f"{attempt.worker} {attempt.task_id} started (attempt {attempt.number} of {self.max_attempts}, "
                  f"pid {attempt.proc.pid if attempt.proc else '-'})")  # fmt: skip

    def finished(self, attempt: Attempt, entry: TaskEntry, retry: bool) -> None:
        self._say(_finished_text(attempt, entry, retry, self.max_attempts))

    def note(self, text: str) -> None:
        self._say(text)

    def landing(self, entry: TaskEntry, state: str, text: str) -> None:
        self._say(f"land {entry.task_id} {state}: {text}")

    def end(self, summary: dict) -> None:
        self._say(run_line(summary))


class LiveProgress(PlainProgress):
    """A rich Live table of the running workers above a counts line; finished tasks scroll above it."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        super().__init__(self.console.file)
        self.live = None
        self.supervisor: Supervisor | None = None
        self._last = 0.0

    def _say(self, text: str) -> None:
        from rich.text import Text

        line = Text(time.strftime("%H:%M:%S") + " ", style="dim")
        line.append(text)  # plain text: task titles and reasons may hold [[wikilinks]], which are not markup
        self.console.print(line, highlight=False)

    def started(self, attempt: Attempt) -> None:
        super().started(attempt)
        self._redraw()

    def finished(self, attempt: Attempt, entry: TaskEntry, retry: bool) -> None:
        super().finished(attempt, entry, retry)
        self._redraw()

    def _redraw(self) -> None:
        if self.live is not None and self.supervisor is not None:
            self._last = time.monotonic()
            self.live.update(self._render(self.supervisor), refresh=True)

    def _render(self, supervisor: Supervisor):
        from rich.table import Table

        table = Table(title=f"hypervisor run {supervisor.run_id} · agent {supervisor.agent.name}"
                      + (" · draining" if supervisor.draining else ""), title_justify="left", expand=False)  # fmt: skip
        for name in ("worker", "task", "attempt", "elapsed"):
            table.add_column(name)
        for attempt in sorted(supervisor.running.values(), key=lambda a: a.slot):
            table.add_row(attempt.worker, attempt.task_id, f"{attempt.number} of {supervisor.max_attempts}",
                          _elapsed(attempt))  # fmt: skip
        table.caption = counts_text(supervisor.counts(), " · ")
        return table

    def begin(self, supervisor: Supervisor) -> None:
        from rich.live import Live

        super().begin(supervisor)
        self.supervisor = supervisor
        self.live = Live(self._render(supervisor), console=self.console, auto_refresh=False, transient=True)
        self.live.start()

    def refresh(self, supervisor: Supervisor) -> None:
        if self.live is not None and time.monotonic() - self._last >= 0.25:
            self._last = time.monotonic()
            self.live.update(self._render(supervisor), refresh=True)

    def end(self, summary: dict) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        super().end(summary)


def progress_for(stream=None) -> NullProgress:
    """Live progress when stderr is a terminal, plain lines otherwise."""
    stream = stream or sys.stderr
    return LiveProgress() if stream.isatty() else PlainProgress(stream)
