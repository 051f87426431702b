"""Completer: record outcomes with one guarded update per batch, then delete or re-time messages.

Jobs that finish close together are completed together: one statement and one commit for
the batch, then one DeleteMessageBatch / ChangeMessageVisibilityBatch per 10 messages. The
database is always written first, so a crash in between only causes a redelivery of a
finished job, which the next claim recognises as a duplicate.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from app.batching import take_batch
from app.db import HeldConnections
from app.errors import DatabaseUnavailable, JobqError
from app.jobs import transitions
from app.jobs.states import JobStatus
from app.jobs.transitions import Claimed, Finish
from app.queue import Message, SqsQueue
from app.sqs_limits import MAX_BATCH
from worker.executor import Outcome
from worker.retry import backoff_seconds, is_final_attempt

log = logging.getLogger("jobq.completer")
T = TypeVar("T")

# Completions written per transaction at most (bounds the statement and the SQS fan-out).
MAX_COMPLETION_BATCH = 100

DELETE_AFTER = (JobStatus.SUCCEEDED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class Completion:
    """One finished attempt waiting to be recorded."""

    message: Message
    job: Claimed
    outcome: Outcome
    max_attempts: int
    release: bool = False  # make a retry visible at once (shutdown) instead of backing off


# Called once per completion with the status written ("" if the job was no longer ours,
# None if it could not be recorded and the message will be redelivered).
OnDone = Callable[[Completion, str | None], None]


class Completer:
    """Turns Outcomes into job state and SQS actions, in that order, a batch at a time."""

    def __init__(
        self,
        db: HeldConnections,
        sqs: SqsQueue,
        worker_id: str,
        *,
        backoff_base: float,
        backoff_cap: float,
        db_retry_seconds: float = 60.0,
        jitter: Callable[[], float] = random.random,
        on_done: OnDone | None = None,
        linger: float = 0.0,
        fill: int = MAX_BATCH,
        others_running: Callable[[int], bool] | None = None,
    ) -> None:
        self._db = db
        self._sqs = sqs
        self._worker_id = worker_id
        self._base = backoff_base
        self._cap = backoff_cap
        self._db_retry_seconds = db_retry_seconds
        self._jitter = jitter
        self._on_done = on_done
        self._linger = linger
        self._fill = fill
        self._others_running = others_running
        self._queue: queue.SimpleQueue[Completion | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    # -- asynchronous use (the worker) -------------------------------------------------------

    def submit(self, completion: Completion) -> None:
        """Queue a completion for the completer thread."""
        self._queue.put(completion)

    def start(self) -> None:
        """Complete queued outcomes in a thread."""
        self._thread = threading.Thread(target=self._run, name="jobq-completer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            # Whatever finished during the previous write: under load, that is the batch.
            batch, stop = take_batch(self._queue, MAX_COMPLETION_BATCH)
            if not stop:
                stop = self._top_up(batch)
            if batch:
                self._complete_and_report(batch)
            if stop:
                return

    def _top_up(self, batch: list[Completion]) -> bool:
        """While other jobs still run, wait up to the linger for `fill` completions.

        A lone job (nothing else running) is completed at once. Returns True on the stop
        sentinel.
        """
        if not self._linger or self._others_running is None:
            return False
        deadline = time.monotonic() + self._linger
        while len(batch) < self._fill and self._others_running(len(batch)):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                return False
            if item is None:
                return True
            batch.append(item)
        return False

    def _complete_and_report(self, batch: list[Completion]) -> None:
        statuses: list[str | None]
        try:
            statuses = list(self.complete_all(batch))
        except JobqError as exc:
            log.warning(
                "could not record %d outcome(s); they will be redelivered: %s", len(batch), exc
            )
            statuses = [None] * len(batch)
        except Exception:
            log.exception("completing %d outcome(s) crashed; they will be redelivered", len(batch))
            statuses = [None] * len(batch)
        if self._on_done is None:
            return
        for completion, status in zip(batch, statuses, strict=True):
            try:
                self._on_done(completion, status)
            except Exception:
                log.exception("completion callback failed")

    # -- synchronous use -------------------------------------------------------------------

    def complete_all(self, batch: list[Completion]) -> list[str]:
        """Record a batch of outcomes in one transaction, then act on their messages."""
        finishes = [self._decide(c) for c in batch]

        def write() -> dict[uuid.UUID, JobStatus]:
            # A retry of a finish that did commit writes nothing (the rows are no longer
            # 'running'): the outcome counts as lost, its message is redelivered and then
            # deleted as a duplicate of a finished job. Nothing is lost either way.
            return self._db.run(
                lambda conn: transitions.finish_many(conn, self._worker_id, finishes)
            )

        written = self._with_db_retries(write)
        self._after_commit(batch, written)
        statuses: list[str] = []
        for c in batch:
            status = written.get(c.job.job_id)
            if status is None:
                # Our lease expired and another worker took the job: its message is theirs.
                log.warning(
                    "lost the job before completing; outcome dropped",
                    extra={"job_id": str(c.job.job_id), "attempt": c.job.attempt},
                )
            statuses.append("" if status is None else status.value)
        return statuses

    def _decide(self, c: Completion) -> Finish:
        if c.outcome.ok:
            return Finish(c.job, JobStatus.SUCCEEDED, "succeeded", c.outcome.result)
        failure = c.outcome.failure
        assert failure is not None
        if failure.retryable and not is_final_attempt(c.job.attempt, c.max_attempts):
            return Finish(c.job, JobStatus.RETRYING, failure.outcome, None, failure.message)
        return Finish(c.job, JobStatus.FAILED, failure.outcome, None, failure.message)

    def _after_commit(
        self,
        batch: list[Completion],
        written: dict[uuid.UUID, JobStatus],
    ) -> None:
        deletes: list[Message] = []
        visibility: list[tuple[Message, float]] = []
        for c in batch:
            status = written.get(c.job.job_id)
            if status is None:
                continue
            retryable = c.outcome.failure is None or c.outcome.failure.retryable
            if status in DELETE_AFTER or (status == JobStatus.FAILED and not retryable):
                deletes.append(c.message)
            elif status == JobStatus.RETRYING:
                visibility.append((c.message, self._retry_delay(c)))
            else:
                # Exhausted: leave the message and make it visible, so the queue's redrive
                # policy moves it to the dead-letter queue on its next receive.
                visibility.append((c.message, 0))
        # The job states are committed: if an SQS call fails, the message reappears later
        # and is handled as a duplicate of a finished (or retrying) job. Nothing is lost.
        try:
            if deletes and self._sqs.delete_batch(deletes):
                log.warning("SQS refused some deletes; those messages come back as duplicates")
            if visibility:
                self._sqs.set_visibilities(visibility)
        except JobqError as exc:
            log.warning("SQS action after commit failed: %s", exc)

    def _retry_delay(self, c: Completion) -> float:
        if c.release:
            return 0.0
        return backoff_seconds(c.job.attempt, base=self._base, cap=self._cap, jitter=self._jitter())

    def _with_db_retries(self, write: Callable[[], T]) -> T:
        """Retry a write while PostgreSQL is unavailable (the heartbeat keeps the message ours)."""
        deadline = time.monotonic() + self._db_retry_seconds
        delay = 0.2
        while True:
            try:
                return write()
            except DatabaseUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("database unavailable while completing; retrying: %s", exc)
                time.sleep(delay)  # backoff between reconnect attempts, not synchronisation
                delay = min(delay * 2, 5.0)
