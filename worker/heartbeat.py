"""Keeping held jobs: leases in PostgreSQL, visibility in SQS, and the lease watchdog.

The three are separate loops so none waits on another: a hung SQS call cannot delay a lease
renewal (a lease that lapsed while the handler runs would let a second worker start it), and a
hung PostgreSQL cannot stop the watchdog from cancelling a job whose lease this worker can no
longer prove it holds, `margin` seconds before that lease runs out; a new claim waits `margin`
past it (see transitions.claim_many), so the two runs never overlap.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.db import translate_db_errors
from app.jobs import queries, transitions
from app.loops import Backoff, PeriodicLoop
from app.sqs.queue import SqsQueue
from worker.inflight import InFlight

log = logging.getLogger("jobq.heartbeat")

WATCHDOG_SECONDS = 0.25


class Heartbeat(PeriodicLoop):
    """Every few seconds: extend the leases of this worker's running jobs in PostgreSQL, and
    pass on cancellation requests (and lost leases) to their handlers."""

    def __init__(
        self,
        inflight: InFlight,
        sessions: sessionmaker[Session],
        worker_id: str,
        *,
        interval: float,
        lease: float,
        margin: float = 0.0,
    ) -> None:
        # A failed renewal is tried again within the interval (never a backoff grown past
        # it): a lease survives an outage up to lease - margin - interval/2 seconds long.
        super().__init__(
            "jobq-heartbeat",
            interval=interval,
            logger=log,
            backoff=lambda: Backoff(min(0.25, interval / 4), 2.0, interval / 2),
        )
        self._margin = margin
        # No renewal waits longer than this on a lock or a slow server: the next try is soon.
        self._statement_ms = int(max(1.0, interval) * 1000)
        self._inflight = inflight
        self._sessions = sessions
        self._worker_id = worker_id
        self._lease = lease

    def beat(self) -> None:
        """One renewal; a failure is logged and retried within half an interval."""
        entries = [e for e in self._inflight.snapshot() if e.ctx is not None]
        if not entries:
            return
        sent_at = time.monotonic()
        ids = [e.ctx.job_id for e in entries if e.ctx is not None]
        with translate_db_errors(), self._sessions.begin() as session:
            session.execute(text(f"SET LOCAL statement_timeout = {self._statement_ms}"))
            held = transitions.extend_leases(session, self._worker_id, ids, self._lease)
        for e in entries:
            assert e.ctx is not None
            if e.ctx.job_id in held:
                e.renewed_at = max(e.renewed_at, sent_at)
                e.ctx.cancelled.expire_at(e.renewed_at + self._lease - self._margin)
                if held[e.ctx.job_id]:
                    e.ctx.cancelled.cancel("cancelled")  # requested through the API
            elif not e.completing:  # a job the completer just finished is not a lost lease
                log.warning("heartbeat: lease on job lost", extra={"job_id": str(e.ctx.job_id)})
                e.ctx.cancelled.cancel("lease_lost")

    def tick(self) -> float | None:
        """One beat, then wait the interval."""
        self.beat()
        return None


class ProgressWriter(PeriodicLoop):
    """About once a second: write the latest ctx.progress() of each running job, all in one
    statement (so a handler reporting in a tight loop costs one row write per interval)."""

    def __init__(
        self,
        inflight: InFlight,
        sessions: sessionmaker[Session],
        worker_id: str,
        *,
        interval: float,
    ) -> None:
        super().__init__("jobq-progress", interval=interval, logger=log)
        self._inflight = inflight
        self._sessions = sessions
        self._worker_id = worker_id

    def tick(self) -> float | None:
        """Write what was reported since the last tick (a failed write is dropped: the next
        report replaces it anyway)."""
        reports = []
        for e in self._inflight.snapshot():
            if e.ctx is not None and (report := e.ctx.take_progress()) is not None:
                reports.append((e.ctx.job_id, e.ctx.attempt, report[0], report[1]))
        if reports:
            with translate_db_errors(), self._sessions.begin() as session:
                queries.write_progress(session, self._worker_id, reports)
        return None


class VisibilityKeeper(PeriodicLoop):
    """Every few seconds: keep held messages invisible in SQS (short-timeout calls), as long as
    their lease in PostgreSQL is proven.

    A claimed job whose lease was not renewed in time is no longer hidden: the watchdog is
    stopping it, and its message reappears at the end of its current visibility (about when
    the lease ends), so another worker takes the job over instead of it being held by a
    worker that cannot reach PostgreSQL (the new claim waits for the lease plus the margin).
    """

    def __init__(
        self,
        inflight: InFlight,
        sqs: SqsQueue,
        *,
        interval: float,
        visibility: int,
        margin: float = 0.0,
    ) -> None:
        super().__init__("jobq-visibility", interval=interval, logger=log)
        self._inflight = inflight
        self._sqs = sqs
        self._visibility = visibility
        self._margin = margin

    def tick(self) -> float | None:
        """Extend the visibility of what is held now under a live lease (or being claimed)."""
        proven_after = time.monotonic() - self._visibility + self._margin
        entries = [
            e for e in self._inflight.snapshot() if e.ctx is None or e.renewed_at > proven_after
        ]
        if entries:
            self._sqs.change_visibility_batch([e.message for e in entries], self._visibility)
        return None


class LeaseWatchdog(PeriodicLoop):
    """Cancels a running job `margin` seconds before the lease this worker last renewed ends.

    Runs on the local monotonic clock, so it needs no database and no agreement between
    clocks; after the process was paused (SIGSTOP, a frozen VM) it fires on the first tick.
    """

    def __init__(self, inflight: InFlight, *, lease: float, margin: float) -> None:
        super().__init__("jobq-watchdog", interval=WATCHDOG_SECONDS, logger=log)
        self._inflight = inflight
        self._lease = lease
        self._margin = margin

    def tick(self) -> float | None:
        """Cancel whatever can no longer be proven ours."""
        now = time.monotonic()
        for e in self._inflight.snapshot():
            if e.ctx is None or e.completing or e.ctx.cancelled.is_set():
                continue
            if now > e.renewed_at + self._lease - self._margin:
                log.warning(
                    "lease about to end without a renewal: stopping the job",
                    extra={"job_id": str(e.ctx.job_id)},
                )
                e.ctx.cancelled.cancel("lease_lost")
        return None
