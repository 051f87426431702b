"""Fast-path publishing of committed jobs to SQS.

A job row commits first (status queued, published_at NULL); then the Publisher sends its id.
If that send is lost (SQS down, process killed), the Dispatcher (app.outbox.dispatcher) finds the
row after `dispatch_after_seconds` and sends it again. A rare double send is harmless: claims are
guarded.
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
from app.jobs import queries
from app.loops import BackgroundLoop
from app.observability import otel
from app.sqs.limits import MAX_BATCH
from app.sqs.queue import Outgoing, SqsQueue, send_calls

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
Call = tuple[str, list[Outgoing]]  # (queue URL, up to 10 ids): one SendMessageBatch


class _Senders(BackgroundLoop, Generic[T, R]):
    """Threads that apply `fn` to work items in parallel; once stopped, map() runs inline."""

    def __init__(self, size: int, fn: Callable[[T], R]) -> None:
        super().__init__("jobq-send", threads=size)
        self._fn = fn
        self._size = size
        self._work: queue.SimpleQueue[tuple[T, queue.SimpleQueue[R]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def run(self) -> None:
        """Serve work items until the stop sentinel."""
        while (item := self._work.get()) is not None:
            arg, results = item
            results.put(self._fn(arg))

    def wake(self) -> None:
        """One stop sentinel per thread, after every item already queued."""
        with self._lock:
            for _ in range(self._size):
                self._work.put(None)

    def map(self, args: list[T]) -> list[R]:
        """fn over args, in parallel; results in completion order."""
        results: queue.SimpleQueue[R] = queue.SimpleQueue()
        with self._lock:
            if self.stopping.is_set() or not self.started:
                return [self._fn(a) for a in args]
            for arg in args:
                self._work.put((arg, results))
        return [results.get() for _ in args]


class Publisher(BackgroundLoop):
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
        super().__init__("jobq-publisher")
        self._sqs = sqs
        self._sessions = sessions
        self._sender_count = max(1, threads)
        self._linger = max(0.0, linger_seconds)
        # (when queued, what); None stops the collector.
        self._pending: queue.SimpleQueue[tuple[float, Outgoing] | None] = queue.SimpleQueue()
        self._lag = 0.0  # how long the ids of the latest cycle had waited
        # While SQS is down every call fails: one warning per WARN_EVERY_SECONDS, not per call.
        self._quiet_until = 0.0
        self._suppressed = 0
        self._senders: _Senders[Call, tuple[list[uuid.UUID], BaseException | None]] | None = None
        if self._sender_count > 1:
            self._senders = _Senders(self._sender_count, self._send_call)

    def start(self) -> None:
        """Start the collecting thread (and the sender threads)."""
        if self._senders is not None:
            self._senders.start()
        super().start()

    def wake(self) -> None:
        """The stop sentinel goes after everything pending: it is all sent first."""
        self._pending.put(None)

    def stop(self, timeout: float = 5.0) -> bool:
        """Send what is pending (bounded by `timeout`), then stop."""
        done = super().stop(timeout)
        if self._senders is not None:
            self._senders.signal_stop()
        return done

    def publish(self, item: Outgoing) -> None:
        """Queue a committed job for sending; never raises, never blocks."""
        self._pending.put((time.monotonic(), item))

    def lagging(self, seconds: float) -> bool:
        """True while ids wait here longer than `seconds`: a burst is being drained, and the
        rows a dispatcher would find overdue are mostly still queued here."""
        return self._lag >= seconds and not self._pending.empty()

    def run(self) -> None:
        """Collect, send and confirm until the stop sentinel."""
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
        calls = send_calls(batch, self._sqs.url_for)
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

    def _send_call(self, call: Call) -> tuple[list[uuid.UUID], BaseException | None]:
        url, chunk = call
        try:
            with otel.span("jobq.publish", chunk[0].trace_id, messages=len(chunk)):
                return self._sqs.send_call(url, chunk), None
        except Exception as exc:  # noqa: BLE001 - reported once per cycle by _send
            return [], exc

    def _confirm(self, job_ids: list[uuid.UUID]) -> None:
        if not job_ids:
            return
        try:
            with translate_db_errors(), self._sessions.begin() as session:
                queries.mark_published(session, job_ids)
        except JobqError as exc:
            # Sent but unconfirmed: the dispatcher sends them again (a harmless duplicate).
            log.warning("could not confirm %d published job(s): %s", len(job_ids), exc)
        except Exception:
            log.exception("confirming published jobs crashed; the dispatcher will re-send them")
