"""Clock, ISO timestamps, and durations written the way people write them (90s, 30m, 1h30m)."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

from .errors import UsageError

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?\Z")


def now() -> float:
    """Seconds since the epoch."""
    return time.time()


def iso(ts: float) -> str:
    """UTC ISO-8601 with seconds, e.g. 2026-11-22T10:04:05Z."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float:
    """Seconds since the epoch for an ISO-8601 timestamp as `iso` writes it (other offsets accepted)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_duration(text: str | int | float, what: str = "duration") -> float:
    """Seconds in '90', '90s', '30m', '2h', '1h30m'; UsageError naming the value otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text).strip().lower())
        if not match or not any(match.groups()):
            msg = f"{what} {text!r} is not a duration: write e.g. 90s, 30m, 2h or 1h30m"
            raise UsageError(msg)
        hours, minutes, secs = (float(group or 0) for group in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        msg = f"{what} {text!r} must be longer than zero"
        raise UsageError(msg)
    return seconds


def humanize(seconds: float) -> str:
    """'40s', '4 min', '2 h 5 min' for a span of seconds."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    hours, rest = divmod(seconds, 3600)
    return f"{hours:.0f} h {rest // 60:.0f} min"
