"""Clock, ISO timestamps, and durations written the way people write them (90s, 30m, 1h30m)."""

from __future__ import annotations

import time

from .errors import UsageError

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


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


def parse_duration(text: str | int | float, what: str = "duration") -> float:
    """Seconds in '90', '90s', '30m', '2h', '1h30m'; UsageError naming the value otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        seconds = _duration_seconds(str(text).strip().lower())
        if seconds is None:
            msg = f"{what} {text!r} is not a duration: write e.g. 90s, 30m, 2h or 1h30m"
            raise UsageError(msg)
    if seconds <= 0:
        msg = f"{what} {text!r} must be longer than zero"
        raise UsageError(msg)
    return seconds


def _duration_seconds(text: str) -> float | None:
    """Seconds in `[N h][N m][N[s]]` (N a decimal number, units in that order), or None."""
    total, number, used = 0.0, "", ""
    for char in text + "$":
        if char in "0123456789.":
            number += char
            continue
        unit = "s" if char == "$" and number and "s" not in used else char
        if char == "$" and not number:
            break
        if unit not in _UNITS or not _is_decimal(number) or (used and "hms".index(unit) <= "hms".index(used[-1])):
            return None
        total += float(number) * _UNITS[unit]
        number, used = "", used + unit
    return total if used else None


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
