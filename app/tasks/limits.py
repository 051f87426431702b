"""Rate limits ("100/minute") and queue names, as declared on tasks and set at run time."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"s": 1.0, "second": 1.0, "m": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
_UNITS["d"] = _UNITS["day"] = 86400.0
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+?)s?\s*$")
QUEUE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Rate:
    """At most `count` starts per `period` seconds (a token bucket refilled continuously)."""

    count: int
    period: float

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


def parse_rate(text: str) -> Rate:
    """`100/minute`, `5/s`, `10/30s`, `1000/hour` -> Rate; ValueError naming the format."""
    match = _RATE.match(text.lower())
    unit = _UNITS.get(match.group(3)) if match else None
    if match is None or unit is None:
        raise ValueError(
            f"rate_limit {text!r} must look like 100/minute, 5/second, 10/30s or 1000/hour"
        )
    count, period = int(match.group(1)), float(match.group(2) or 1) * unit
    if count < 1 or period <= 0:
        raise ValueError(f"rate_limit {text!r} must allow at least 1 per a positive period")
    return Rate(count, period)


def check_queue_name(name: str) -> str:
    """The queue name if valid (lower-case letters, digits, - and _; up to 64); ValueError."""
    if not QUEUE_NAME.match(name):
        raise ValueError(f"queue name {name!r} must be 1-64 lower-case letters, digits, '-' or '_'")
    return name
