"""Fast-path publishing of committed jobs to SQS, and the dispatcher that repairs misses.

A job row commits first (status queued, published_at NULL); then the Publisher sends its id.
If that send is lost (SQS down, process killed), the Dispatcher finds the row after
`dispatch_after_seconds` and sends it again. A rare double send is harmless: claims are guarded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from sqlalchemy.orm import Session, sessionmaker

from app.db import translate_db_errors
from app.errors import JobqError
from app.jobs import store
from app.observability import tracing
from app.queue import Outgoing, SqsQueue
from app.sqs_limits import MAX_BATCH

# Under load, drain up to this many ids per cycle: SendMessageBatch calls of 10 each, then one
# UPDATE to confirm them all, instead of one confirming UPDATE per 10 messages.
DRAIN_MAX = 10 * MAX_BATCH

log = logging.getLogger("jobq.publisher")


class Publisher:
    """Background thread that sends committed job ids with SendMessageBatch (10 per call)."""

    def __init__(self, sqs: SqsQueue, sessions: sessionmaker[Session]) -> None:
        self._sqs = sqs
        self._sessions = sessions
        self._pending: queue.Queue[Outgoing | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the sending thread."""
        self._thread = threading.Thread(target=self._run, name="jobq-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is pending (bounded by `timeout`), then stop."""
        if self._thread is None:
            return
        self._pending.put(None)
        self._thread.join(timeout)
        self._thread = None

    def publish(self, item: Outgoing) -> None:
        """Queue a committed job for sending; never raises, never blocks."""
        self._pending.put(item)

    def _run(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < DRAIN_MAX:
                try:
                    item = self._pending.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._send(batch)
            if stop:
                return

    def _send(self, batch: list[Outgoing]) -> None:
        try:
            with tracing.span("jobq.publish", batch[0].trace_id, messages=len(batch)):
                confirmed = self._sqs.send_batch(batch)
            with translate_db_errors(), self._sessions.begin() as session:
                store.mark_published(session, confirmed)
        except JobqError as exc:
            # Not lost: the rows stay unpublished and the dispatcher sends them later.
            log.warning("fast-path publish failed; dispatcher will retry: %s", exc)
        except Exception:
            log.exception("fast-path publish crashed; dispatcher will retry")


class Dispatcher:
    """Loop that publishes due scheduled jobs, re-publishes unconfirmed ones, prunes old ones."""

    def __init__(
        self,
        sqs: SqsQueue,
        sessions: sessionmaker[Session],
        *,
        after_seconds: float,
        interval_seconds: float,
        batch_size: int = 100,
        retention_days: float | None = None,
        prune_every_seconds: float = 60.0,
    ) -> None:
        self._sqs = sqs
        self._sessions = sessions
        self._after = after_seconds
        self._interval = interval_seconds
        self._batch = batch_size
        self._retention_days = retention_days
        self._prune_every = prune_every_seconds
        self._next_prune = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Publish one batch of overdue unconfirmed jobs; return how many SQS confirmed."""
        with translate_db_errors(), self._sessions.begin() as session:
            rows = store.claim_unpublished(
                session, older_than_seconds=self._after, limit=self._batch
            )
            if not rows:
                return 0
            # Rows stay locked while we send, so a second dispatcher skips them.
            confirmed = self._sqs.send_batch(rows)
            store.mark_published(session, confirmed)
        if confirmed:
            log.info("dispatcher re-published %d job(s)", len(confirmed))
        return len(confirmed)

    def promote_scheduled(self) -> int:
        """Send scheduled jobs due within SQS's delay window; they become queued."""
        with translate_db_errors(), self._sessions.begin() as session:
            rows = store.claim_due_scheduled(session, limit=self._batch)
            if not rows:
                return 0
            confirmed = self._sqs.send_batch(rows)
            store.mark_scheduled_queued(session, confirmed)
        return len(confirmed)

    def prune(self) -> int:
        """Delete finished jobs past retention, a batch at a time; return how many."""
        if self._retention_days is None:
            return 0
        total = 0
        while True:
            with translate_db_errors(), self._sessions.begin() as session:
                deleted = store.prune_finished(
                    session, older_than_days=self._retention_days, limit=1000
                )
            total += deleted
            if deleted < 1000 or self._stop.is_set():
                break
        if total:
            log.info("retention pruned %d finished job(s)", total)
        return total

    def run_pass(self) -> int:
        """One full pass; returns how many messages were sent (more work likely if large)."""
        sent = self.promote_scheduled() + self.run_once()
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + self._prune_every
            self.prune()
        return sent

    def run_forever(self) -> None:
        """Dispatch until stop() is called, backing off on errors."""
        delay = self._interval
        while not self._stop.is_set():
            try:
                sent = self.run_pass()
                delay = self._interval
                if sent >= self._batch:
                    continue  # more rows are likely waiting
            except JobqError as exc:
                log.warning("dispatcher pass failed: %s", exc)
                delay = min(delay * 2, 30.0)
            except Exception:
                log.exception("dispatcher pass crashed")
                delay = min(delay * 2, 30.0)
            self._stop.wait(delay)

    def start(self) -> None:
        """Run in a daemon thread."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run_forever, name="jobq-dispatcher", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to stop and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
