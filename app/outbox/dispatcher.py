"""The dispatcher: publishes scheduled jobs as they come due and re-sends unconfirmed ones.

Several API (or `jobq dispatcher`) processes share the work: rows are locked with
FOR UPDATE SKIP LOCKED while their messages are sent, so each row is sent by one of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import translate_db_errors
from app.jobs import queries, transitions
from app.jobs.notify import listen_connection
from app.loops import PeriodicLoop
from app.outbox.wakeup import OutboxWakeup
from app.runtime import Runtime
from app.sqs.queue import SqsQueue

log = logging.getLogger("jobq.dispatcher")


class Dispatcher(PeriodicLoop):
    """Loop that publishes due scheduled jobs and re-publishes unconfirmed ones."""

    def __init__(
        self,
        sqs: SqsQueue,
        sessions: sessionmaker[Session],
        *,
        after_seconds: float,
        interval_seconds: float,
        batch_size: int = 100,
        defer: Callable[[], bool] | None = None,
        listen: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__("jobq-dispatcher", interval=interval_seconds, logger=log)
        # jobq.enqueue's NOTIFY: publish its jobs at commit rather than at the next pass.
        self.wakeup = OutboxWakeup(listen, self.publish_enqueued) if listen else None
        self._sqs = sqs
        # While this returns True, overdue rows are left alone (their ids are still queued in
        # this process's publisher: sending them here too would only double the work).
        self._defer = defer
        self._sessions = sessions
        self._after = after_seconds
        self._batch = batch_size

    def run_once(self) -> int:
        """Publish one batch of overdue unconfirmed jobs; return how many SQS confirmed."""
        if self._defer is not None and self._defer():
            return 0
        with translate_db_errors(), self._sessions.begin() as session:
            rows = queries.claim_unpublished(
                session, older_than_seconds=self._after, limit=self._batch
            )
            if not rows:
                return 0
            # Rows stay locked while we send, so a second dispatcher skips them.
            confirmed = self._sqs.send_batch(rows)
            queries.mark_published(session, confirmed)
        if confirmed:
            log.info("dispatcher re-published %d job(s)", len(confirmed))
        return len(confirmed)

    def publish_enqueued(self, job_ids: list[str]) -> int:
        """Send these just-committed queued jobs unless another dispatcher already did."""
        with translate_db_errors(), self._sessions.begin() as session:
            rows = queries.claim_enqueued(session, job_ids)
            if not rows:
                return 0
            confirmed = self._sqs.send_batch(rows)
            queries.mark_published(session, confirmed)
        return len(confirmed)

    def start(self) -> None:
        """Start the periodic passes and the enqueue listener."""
        super().start()
        if self.wakeup is not None:
            self.wakeup.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop both."""
        if self.wakeup is not None:
            self.wakeup.stop(timeout)
        return super().stop(timeout)

    def promote_scheduled(self) -> int:
        """Send scheduled jobs due within SQS's delay window; they become queued.

        `queued` is committed before the send. A job due now is sent without a delay, and a
        worker may receive its message at once: had the job still been `scheduled`, the
        worker would take the message for a stale copy and delete it, and the job would sit
        queued with no message. A send that fails leaves the jobs queued and unconfirmed,
        for the re-publish pass (run_once) to send.
        """
        with translate_db_errors(), self._sessions.begin() as session:
            rows = queries.claim_due_scheduled(session, limit=self._batch)
            if not rows:
                return 0
            transitions.scheduled_to_queued(session, [r.job_id for r in rows], published=False)
        confirmed = self._sqs.send_batch(rows)
        with translate_db_errors(), self._sessions.begin() as session:
            queries.mark_promoted(session, confirmed)
        return len(confirmed)

    def run_pass(self) -> int:
        """One full pass; returns how many messages were sent (more work likely if large)."""
        return self.promote_scheduled() + self.run_once()

    def tick(self) -> float | None:
        """A pass; the next one at once while full batches suggest more rows are waiting."""
        return 0 if self.run_pass() >= self._batch else None


def build_dispatcher(
    runtime: Runtime, settings: Settings, *, defer: Callable[[], bool] | None = None
) -> Dispatcher:
    """The dispatcher as the API (in-process) and `jobq dispatcher` run it."""
    return Dispatcher(
        runtime.sqs,
        runtime.sessions,
        after_seconds=settings.dispatch_after_seconds,
        interval_seconds=settings.dispatch_interval_seconds,
        defer=defer,
        listen=lambda: listen_connection(runtime.engine),
    )
