"""The database gate: while PostgreSQL is unreachable, the worker stops receiving.

Every receive of a message that cannot be claimed costs it one of SQS's maxReceiveCount
receives, so a worker that kept polling through a long outage would dead-letter jobs that never
ran. A failed claim closes the gate (its messages are given back at once); a probe, retried
with backoff, opens it again as soon as PostgreSQL answers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from app.loops import Backoff, PeriodicLoop

log = logging.getLogger("jobq.gate")

PROBE_EVERY_SECONDS = 1.0


class DatabaseGate(PeriodicLoop):
    """Open while PostgreSQL answers; closed by a failed claim, reopened by a probe."""

    def __init__(self, probe: Callable[[], None]) -> None:
        super().__init__(
            "jobq-db-gate",
            interval=PROBE_EVERY_SECONDS,
            backoff=lambda: Backoff(0.5, 2.0, 10.0),
            logger=log,
        )
        self._probe = probe
        self._open = threading.Event()
        self._open.set()

    @property
    def is_open(self) -> bool:
        """True while receiving is allowed."""
        return self._open.is_set()

    def close(self, reason: object) -> None:
        """Stop receiving until a probe succeeds."""
        if self._open.is_set():
            log.warning("PostgreSQL unreachable: not receiving until it answers (%s)", reason)
            self._open.clear()

    def wait_open(self, timeout: float) -> bool:
        """Block until the gate is open (True) or `timeout` passes (False)."""
        return self._open.wait(timeout)

    def tick(self) -> float | None:
        """While closed: probe (a failure raises, and the loop backs off); open on success."""
        if self._open.is_set():
            return None
        self._probe()
        log.info("PostgreSQL answers again: receiving")
        self._open.set()
        return None
