"""Clock, ISO timestamps, and durations written the way people write them (90s, 30m, 1h30m, 1d)."""

from __future__ import annotations

import time

from .errors import UsageError
from .limits import quote

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def now() -> float:
    """Seconds since the epoch."""
    return time.time()


def iso(ts: float) -> str:
    """UTC ISO-8601 with seconds, e.g. 2026-11-22T10:04:05Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def parse_iso(text: str) -> float:
    """Seconds since the epoch for an ISO-8601 timestamp as `iso` writes it (other offsets accepted)."""
    from datetime import datetime  # the hooks never parse timestamps: keep datetime off their start-up

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


DURATION_FORMS = "90s, 30m, 2h, 1h30m or 1d"  # what a duration may look like, said by every refusal of one


def parse_duration(text: object, what: str = "duration") -> float:
    """Seconds in '90s', '30m', '2h', '1h30m', '1d' (units d, h, m, s in that order, each once; decimals allowed).

    The one duration rule of the CLI, .hypervisor.yaml and the scripts: a bare number (`30`, or a YAML 30) is
    refused, since nothing says whether it means seconds or minutes. UsageError naming `what` and the value."""
    seconds = _duration_seconds(text.strip().lower()) if isinstance(text, str) else None
    if seconds is None:
        bare = isinstance(text, (int, float)) and not isinstance(text, bool)
        bare = bare or (isinstance(text, str) and _is_decimal(text.strip()))
        why = " (a bare number has no unit)" if bare else ""
        raise UsageError(f"{what} {quote(text)} is not a duration{why}: write one of {DURATION_FORMS}")
    if seconds <= 0:
        raise UsageError(f"{what} {quote(text)} must be longer than zero: write one of {DURATION_FORMS}")
    return seconds


def _duration_seconds(text: str) -> float | None:
    """Seconds in `[N d][N h][N m][N s]` (N a decimal number, at least one unit, units in that order), or None."""
    total, number, used = 0.0, "", ""
    for char in text:
        if char in "0123456789.":
            number += char
            continue
        if char not in _UNITS or not _is_decimal(number) or (used and "dhms".index(char) <= "dhms".index(used[-1])):
            return None
        total += float(number) * _UNITS[char]
        number, used = "", used + char
    return total if used and not number else None


def _is_decimal(number: str) -> bool:
    whole, _, fraction = number.partition(".")
    return whole.isdigit() and (fraction.isdigit() or "." not in number)


def humanize(seconds: float) -> str:
    """'40s', '4 min', '2 h 5 min' for a span of seconds."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    hours, rest = divmod(seconds, 3600)
    return f"{hours:.0f} h {rest // 60:.0f} min"
