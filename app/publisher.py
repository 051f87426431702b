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
import uuid
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from app.db import translate_db_errors
from app.errors import JobqError
from app.jobs import store
from app.observability import tracing
from app.queue import Outgoing, SqsQueue
from app.sqs_limits import MAX_BATCH

# Under load, take up to this many ids per cycle: their SendMessageBatch calls (10 ids each) run
# on the sender threads in parallel.
DRAIN_MAX = 30 * MAX_BATCH
# Confirm (UPDATE ... published_at) once this many ids were sent, or this long after the oldest
# unconfirmed send: one UPDATE for many calls. Far below dispatch_after_seconds, so the
# dispatcher does not re-send what was sent but not yet confirmed.
CONFIRM_MAX = 10 * MAX_BATCH
CONFIRM_SECONDS = 0.05
WARN_EVERY_SECONDS = 5.0

log = logging.getLogger("jobq.publisher")

T = TypeVar("T")
R = TypeVar("R")


class _Pool(Generic[T, R]):
    """Daemon threads that apply `fn` to work items (a process never waits for them at exit,
    unlike ThreadPoolExecutor's); after close(), map() runs on the caller's thread."""

    def __init__(self, size: int, fn: Callable[[T], R], name: str) -> None:
        self._fn = fn
        self._work: queue.SimpleQueue[tuple[T, queue.SimpleQueue[R]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._size = size
        self._closed = False
        for i in range(size):
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True).start()

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            arg, results = item
            results.put(self._fn(arg))

    def map(self, args: list[T]) -> list[R]:
        """fn over args, in parallel; results in completion order."""
        results: queue.SimpleQueue[R] = queue.SimpleQueue()
        with self._lock:
            if self._closed:
                return [self._fn(a) for a in args]
            for arg in args:
                self._work.put((arg, results))
        return [results.get() for _ in args]

    def close(self) -> None:
        """Let the threads finish what is queued, then end."""
        with self._lock:
            self._closed = True
            for _ in range(self._size):
                self._work.put(None)


class Publisher:
    """Background threads that send committed job ids with SendMessageBatch (10 per call).

    One thread collects queued ids (lingering up to `linger_seconds` to fill a call of 10 when
    fewer are waiting), `threads` threads make the calls in parallel (the boto3 client is
    thread-safe), and confirmed ids are marked published with one plain UPDATE per cycle or per
    CONFIRM_SECONDS, whichever comes first.
    """

    def __init__(
        self,
        sqs: SqsQueue,
        sessions: sessionmaker[Session],
        *,
        threads: int = 3,
        linger_seconds: float = 0.005,
    ) -> None:
        self._sqs = sqs
        self._sessions = sessions
        self._threads = max(1, threads)
        self._linger = max(0.0, linger_seconds)
        # (when queued, what); None stops the collector.
        self._pending: queue.SimpleQueue[tuple[float, Outgoing] | None] = queue.SimpleQueue()
        self._lag = 0.0  # how long the ids of the latest cycle had waited
        # While SQS is down every call fails: one warning per WARN_EVERY_SECONDS, not per call.
        self._quiet_until = 0.0
        self._suppressed = 0
        self._thread: threading.Thread | None = None
        self._senders: _Pool[list[Outgoing], tuple[list[uuid.UUID], BaseException | None]] | None
        self._senders = None

    def start(self) -> None:
        """Start the collecting thread (and the sender threads)."""
        if self._threads > 1:
            self._senders = _Pool(self._threads, self._send_call, "jobq-send")
        self._thread = threading.Thread(target=self._run, name="jobq-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is pending (bounded by `timeout`), then stop."""
        if self._thread is None:
            return
        self._pending.put(None)
        self._thread.join(timeout)
        self._thread = None
        if self._senders is not None:
            self._senders.close()

    def publish(self, item: Outgoing) -> None:
        """Queue a committed job for sending; never raises, never blocks."""
        self._pending.put((time.monotonic(), item))

    def lagging(self, seconds: float) -> bool:
        """True while ids wait here longer than `seconds`: a burst is being drained, and the
        rows a dispatcher would find overdue are mostly still queued here."""
        return self._lag >= seconds and not self._pending.empty()

    def _run(self) -> None:
        unconfirmed: list[uuid.UUID] = []
        confirm_by = 0.0
        stop = False
        while not stop:
            timeout = max(0.0, confirm_by - time.monotonic()) if unconfirmed else None
            try:
                first = self._pending.get(timeout=timeout)
            except queue.Empty:
                self._confirm(unconfirmed)
                unconfirmed = []
                continue
            if first is None:
                break
            batch, stop = self._collect(first)
            sent = self._send(batch)
            if sent and not unconfirmed:
                confirm_by = time.monotonic() + CONFIRM_SECONDS
            unconfirmed.extend(sent)
            if len(unconfirmed) >= CONFIRM_MAX or time.monotonic() >= confirm_by:
                self._confirm(unconfirmed)
                unconfirmed = []
        self._confirm(unconfirmed)

    def _collect(self, first: tuple[float, Outgoing]) -> tuple[list[Outgoing], bool]:
        """`first` and whatever else is queued (up to DRAIN_MAX); (batch, stop requested)."""
        now = time.monotonic()
        self._lag = now - first[0]
        batch = [first[1]]
        deadline = now + self._linger
        while len(batch) < DRAIN_MAX:
            try:
                item = self._pending.get_nowait()
            except queue.Empty:
                # Not even one full call yet: wait a little for more.
                wait = deadline - time.monotonic()
                if len(batch) >= MAX_BATCH or wait <= 0:
                    break
                try:
                    item = self._pending.get(timeout=wait)
                except queue.Empty:
                    break
            if item is None:
                return batch, True
            batch.append(item[1])
        return batch, False

    def _warn_failed(self, calls: int, exc: JobqError) -> None:
        """Log failed sends at most once per WARN_EVERY_SECONDS, counting the ones in between."""
        now = time.monotonic()
        if now < self._quiet_until:  # only the publisher thread gets here: no lock needed
            self._suppressed += calls
            return
        earlier, self._suppressed = self._suppressed, 0
        self._quiet_until = now + WARN_EVERY_SECONDS
        log.warning(
            "fast-path publish failed for %d call(s)%s; dispatcher will retry: %s",
            calls,
            f" (and {earlier} more since the last warning)" if earlier else "",
            exc,
        )

    def _send(self, batch: list[Outgoing]) -> list[uuid.UUID]:
        """SendMessageBatch per 10 ids of one queue, in parallel; the ids SQS accepted."""
        by_url: dict[str, list[Outgoing]] = {}
        for item in batch:
            by_url.setdefault(self._sqs.url_for(item.priority), []).append(item)
        calls = [
            group[i : i + MAX_BATCH]
            for group in by_url.values()
            for i in range(0, len(group), MAX_BATCH)
        ]
        if len(calls) == 1 or self._senders is None:
            outcomes = [self._send_call(call) for call in calls]
        else:
            outcomes = self._senders.map(calls)
        confirmed: list[uuid.UUID] = []
        failures: list[BaseException] = []
        for ids, error in outcomes:
            confirmed.extend(ids)
            if error is not None:
                failures.append(error)
        if failures:
            # Not lost: the rows stay unpublished and the dispatcher sends them later.
            exc = failures[0]
            if isinstance(exc, JobqError):
                self._warn_failed(len(failures), exc)
            else:
                log.error(
                    "fast-path publish crashed; dispatcher will retry",
                    exc_info=(type(exc), exc, exc.__traceback__),
                )
        return confirmed

    def _send_call(self, call: list[Outgoing]) -> tuple[list[uuid.UUID], BaseException | None]:
        try:
            with tracing.span("jobq.publish", call[0].trace_id, messages=len(call)):
                return self._sqs.send_batch(call), None
        except Exception as exc:  # noqa: BLE001 - reported once per cycle by _send
            return [], exc

    def _confirm(self, job_ids: list[uuid.UUID]) -> None:
        if not job_ids:
            return
        try:
            with translate_db_errors(), self._sessions.begin() as session:
                store.mark_published(session, job_ids)
        except JobqError as exc:
            # Sent but unconfirmed: the dispatcher sends them again (a harmless duplicate).
            log.warning("could not confirm %d published job(s): %s", len(job_ids), exc)
        except Exception:
            log.exception("confirming published jobs crashed; the dispatcher will re-send them")


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
        defer: Callable[[], bool] | None = None,
    ) -> None:
        self._sqs = sqs
        # While this returns True, overdue rows are left alone (their ids are still queued in
        # this process's publisher: sending them here too would only double the work).
        self._defer = defer
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
        if self._defer is not None and self._defer():
            return 0
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
