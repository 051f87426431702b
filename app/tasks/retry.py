"""Retry schedules a task (or the whole service) declares: how long to wait before each retry.

    @task("sync", max_attempts=20, backoff=Exponential(base_seconds=5, cap_seconds=3600))
    @task("poll", backoff=Fixed(60))
    @task("notify", backoff=[10, 60, 600])      # a list: the nth retry waits the nth delay

Waits up to SQS's 15-minute DelaySeconds go out as a delayed message; longer ones are held in
PostgreSQL and sent by the dispatcher when they come due, so any schedule is possible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_RETRY_DELAY_SECONDS = 7 * 24 * 3600  # the longest wait between two attempts


def _jittered(step: float, jitter: float, rnd: float) -> float:
    """`step` spread by ±jitter (a fraction); `rnd` in [0, 1] (random in production)."""
    spread = min(max(jitter, 0.0), 1.0)
    factor = 1 - spread + 2 * spread * min(max(rnd, 0.0), 1.0)
    return max(0.0, min(step * factor, MAX_RETRY_DELAY_SECONDS))


@dataclass(frozen=True)
class Exponential:
    """base·2^(n-1) before the nth retry, capped, spread by ±jitter."""

    base_seconds: float = 15.0
    cap_seconds: float = 1800.0
    jitter: float = 0.25

    def delay(self, retry: int, rnd: float) -> float:
        """Seconds to wait before retry number `retry` (1 = the first retry)."""
        step = min(self.cap_seconds, self.base_seconds * 2 ** min(max(retry, 1) - 1, 62))
        return _jittered(step, self.jitter, rnd)

    def describe(self) -> dict[str, Any]:
        """JSON for the task catalogue."""
        return {"kind": "exponential", **self.__dict__}


@dataclass(frozen=True)
class Fixed:
    """The same wait before every retry (spread by ±jitter)."""

    seconds: float
    jitter: float = 0.0

    def delay(self, retry: int, rnd: float) -> float:
        """Seconds to wait before retry number `retry`."""
        return _jittered(self.seconds, self.jitter, rnd)

    def describe(self) -> dict[str, Any]:
        """JSON for the task catalogue."""
        return {"kind": "fixed", **self.__dict__}


@dataclass(frozen=True)
class Schedule:
    """An explicit list of waits: the nth retry waits delays[n-1] (the last one repeats)."""

    delays: tuple[float, ...]

    def delay(self, retry: int, rnd: float) -> float:
        """Seconds to wait before retry number `retry`."""
        return _jittered(self.delays[min(max(retry, 1), len(self.delays)) - 1], 0.0, rnd)

    def describe(self) -> dict[str, Any]:
        """JSON for the task catalogue."""
        return {"kind": "schedule", "delays": list(self.delays)}


Backoff = Exponential | Fixed | Schedule


def as_backoff(value: Backoff | float | Sequence[float] | None) -> Backoff | None:
    """A task's `backoff=` argument as a schedule: a number is Fixed, a list is a Schedule."""
    if value is None or isinstance(value, Exponential | Fixed | Schedule):
        return value
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("backoff seconds must be >= 0")
        return Fixed(float(value))
    delays = tuple(float(v) for v in value)
    if not delays or any(d < 0 for d in delays):
        raise ValueError("a backoff list needs one or more delays >= 0")
    return Schedule(delays)
