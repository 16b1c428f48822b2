"""The `## Worker log` entry a task body gets when a worker completes, blocks or releases it, or it is dead-lettered."""

from __future__ import annotations

from ..core.timeutil import humanize, iso

TYPE_CHECKING = False  # collections.abc costs every claim 4 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Iterable

HEADING = "## Worker log"


def format_entry(
    at: float,
    worker: str,
    outcome: str,
    summary: str,
    *,
    files: Iterable[str] = (),
    commit: str | None = None,
    tool_calls: int | None = None,
    duration_s: float | None = None,
    details: Iterable[str] = (),
) -> str:
    """One markdown bullet: time, worker, outcome, summary, then whatever else is known."""
    parts = [f"**{iso(at)}** · {worker} · **{outcome}**"]
    if duration_s is not None:
        parts.append(f"took {humanize(duration_s)}")
    if tool_calls is not None:
        parts.append(f"{tool_calls} tool calls")
    if commit:
        parts.append(f"commit `{commit}`")
    lines = ["- " + " · ".join(parts)]
    text = " ".join(summary.split())
    if text:
        lines.append(f"  - {text}")
    lines += [f"  - {' '.join(line.split())}" for line in details]
    files = sorted(set(files))
    if files:
        lines.append("  - files: " + ", ".join(f"`{name}`" for name in files))
    return "\n".join(lines)
