"""The reconciler: re-sends jobs whose SQS message vanished, so nothing drifts.

PostgreSQL says a job is `queued` or `retrying` (or `running` under a lease that ran out), but
its message can disappear from SQS behind jobq's back: a queue purge, retention expiry, the
embedded SQS server of `make dev` restarted. Nothing would ever deliver such a job again. Each
pass, under a fleet-wide advisory lock (app/maintenance/leader.py), finds jobs that should long
have been received and claimed (due time + visibility timeout + JOBQ_RECONCILE_MARGIN_SECONDS,
and no live lease) and sends their message again. A duplicate is harmless: the claim is a
guarded UPDATE.

A queue with a backlog holds many jobs that are late but not lost. So a pass re-sends, per
queue, at most as many jobs as SQS is short of: the jobs that should have a message minus the
messages SQS counts (visible, in flight and delayed). A backlog is never doubled; a real loss
is repaired oldest first, and what a backlog hides is repaired as it drains. (Jobs sent in the
last interval are left out of "should have a message": SQS's approximate counts may not show
them yet, and undercounting SQS would re-send a backlog.)
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import translate_db_errors
from app.errors import JobqError
from app.jobs import queries
from app.jobs.queries import Drifted
from app.loops import PeriodicLoop
from app.maintenance import leader
from app.observability.metrics import RECONCILED
from app.runtime import Runtime
from app.sqs.queue import Outgoing, QueueCounts, SqsQueue

log = logging.getLogger("jobq.reconciler")
LOGGED_IDS = 10  # job ids named in a pass's log line
SEND_CHUNK = 100  # ids per round of SendMessageBatch calls (10 calls)
# Sending stops after this long, well inside the lock's hold limit (the pass's transaction).
SEND_BUDGET_SECONDS = leader.HOLD_LIMIT_SECONDS / 3


class Reconciler(PeriodicLoop):
    """Loop that re-sends jobs whose message SQS no longer holds."""

    def __init__(
        self,
        sqs: SqsQueue,
        sessions: sessionmaker[Session],
        *,
        after_seconds: float,
        settle_seconds: float,
        lease_margin: float,
        interval_seconds: float,
        batch_size: int = 500,
    ) -> None:
        super().__init__("jobq-reconciler", interval=interval_seconds, logger=log)
        self._sqs = sqs
        self._sessions = sessions
        self._after = after_seconds
        self._settle = settle_seconds
        self._lease_margin = lease_margin
        self._batch = batch_size

    def run_once(self) -> int:
        """One pass (if no other process is making one); how many jobs were re-sent."""
        # Counted before the lock: a hung SQS endpoint stalls this process, not the lock.
        urls = self._sqs.distinct_urls(self._sqs.queue_names())
        counts = {url: self._sqs.counts(url) for url in urls}
        with translate_db_errors(), self._sessions.begin() as session:
            if not leader.lead(session, leader.Pass.RECONCILE):
                return 0
            drifted = self._find(session, counts)
            if not drifted:
                return 0
            # Rows stay locked while we send: a claim of one of them waits for the stamp.
            sent = self._send([d.outgoing for d in drifted])
            queries.stamp_sent(session, sent)
        self._record(drifted, set(sent))
        return len(sent)

    def _find(self, session: Session, counts: dict[str, QueueCounts]) -> list[Drifted]:
        """Drifted jobs, per queue no more than SQS is short of, at most a batch in all."""
        found: list[Drifted] = []
        for url, seen in counts.items():
            routes = self._sqs.routes_of(url)
            expected = queries.expected_messages(
                session, routes, settle_seconds=self._settle, queue_created=seen.created
            )
            missing = expected - seen.messages
            budget = min(missing, self._batch - len(found))
            if budget <= 0:
                continue
            found += queries.claim_drifted(
                session,
                routes,
                after_seconds=self._after,
                lease_margin=self._lease_margin,
                queue_created=seen.created,
                limit=budget,
            )
        return found

    def _send(self, items: list[Outgoing]) -> list[uuid.UUID]:
        """Send what SQS takes within SEND_BUDGET_SECONDS; the ids it confirmed.

        A slow or failing SQS ends the sending early rather than the transaction: what was
        sent is stamped, the rest is found again by the next pass (a hold past the lock's
        limit would roll the stamps back and make every message a duplicate next time).
        """
        deadline = time.monotonic() + SEND_BUDGET_SECONDS
        sent: list[uuid.UUID] = []
        for start in range(0, len(items), SEND_CHUNK):
            try:
                sent += self._sqs.send_batch(items[start : start + SEND_CHUNK])
            except JobqError as exc:
                log.warning("re-sending stopped after %d job(s): %s", len(sent), exc)
                break
            if time.monotonic() > deadline:
                break
        return sent

    def _record(self, drifted: list[Drifted], sent: set[uuid.UUID]) -> None:
        by_status = Counter(d.status.value for d in drifted if d.outgoing.job_id in sent)
        for status, n in by_status.items():
            RECONCILED.labels(status).inc(n)
        if by_status:
            ids = [str(d.outgoing.job_id) for d in drifted if d.outgoing.job_id in sent]
            log.warning(
                "re-sent %d job(s) whose SQS message was missing (%s): %s%s",
                len(ids),
                ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())),
                ", ".join(ids[:LOGGED_IDS]),
                " ..." if len(ids) > LOGGED_IDS else "",
            )

    def tick(self) -> float | None:
        """A pass; the next one at once after a full batch (more are likely waiting)."""
        return 0 if self.run_once() >= self._batch else None


def build_reconciler(runtime: Runtime, settings: Settings) -> Reconciler | None:
    """The reconciler as the API and `jobq dispatcher` run it; None when turned off."""
    if settings.reconcile_interval_seconds <= 0:
        return None
    return Reconciler(
        runtime.sqs,
        runtime.sessions,
        after_seconds=settings.reconcile_after_seconds,
        # SQS's approximate counts may miss sends younger than this: one interval, so each
        # pass counts what the previous one sent.
        settle_seconds=settings.reconcile_interval_seconds,
        lease_margin=settings.effective_lease_margin,
        interval_seconds=settings.reconcile_interval_seconds,
        batch_size=settings.reconcile_batch_size,
    )
