"""Completer: record outcomes with one guarded update per batch, then act on the messages.

Jobs that finish close together are completed together: one statement and one commit for
the batch; then, on the after-commit thread (worker/after_commit.py, so a hung SQS never
holds up the next commit), the fresh (delayed) messages of jobs that run again and one
DeleteMessageBatch per 10 messages. The database is always written first, so a crash in
between only causes a redelivery of a finished job, which the next claim recognises as a
duplicate, or a retry the dispatcher sends.
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
from typing import Any, TypeVar

from app.db import HeldConnections
from app.errors import DatabaseUnavailable, JobqError
from app.jobs import queries, transitions
from app.jobs.states import JobStatus
from app.jobs.transitions import Claimed, Finish, Ready
from app.loops import BackgroundLoop, Backoff, take_batch
from app.sqs.limits import MAX_BATCH, MAX_DELAY_SECONDS
from app.sqs.queue import Message, Outgoing, SqsQueue
from app.tasks.retry import Backoff as RetrySchedule
from worker import policy
from worker.after_commit import AfterCommit, Settle
from worker.encode import describe, safe_text
from worker.executor import Outcome

log = logging.getLogger("jobq.completer")
T = TypeVar("T")

# Completions written per transaction at most (bounds the statement and the SQS fan-out).
MAX_COMPLETION_BATCH = 100


@dataclass(frozen=True)
class Completion:
    """One finished run waiting to be recorded."""

    message: Message
    job: Claimed
    outcome: Outcome
    max_attempts: int


# Called once per completion with the status written ("" if the job was no longer ours,
# None if it could not be recorded and the message will be redelivered).
OnDone = Callable[[Completion, str | None], None]


class Completer(BackgroundLoop):
    """Turns Outcomes into job state and SQS actions, in that order, a batch at a time."""

    def __init__(
        self,
        db: HeldConnections,
        sqs: SqsQueue,
        worker_id: str,
        *,
        backoff_for: Callable[[str], RetrySchedule],
        db_retry_seconds: float = 60.0,
        jitter: Callable[[], float] = random.random,
        on_done: OnDone | None = None,
        linger: float = 0.0,
        fill: int = MAX_BATCH,
        others_running: Callable[[int], bool] | None = None,
        stopping: threading.Event | None = None,
        actions: AfterCommit | None = None,
    ) -> None:
        super().__init__("jobq-completer")
        self._db = db
        # SQS calls after a commit; not started (synchronous use) they run inline.
        self.actions = actions or AfterCommit(sqs)
        self._worker_id = worker_id
        self._backoff_for = backoff_for
        self._db_retry_seconds = db_retry_seconds
        self._jitter = jitter
        self._on_done = on_done
        self._linger = linger
        self._fill = fill
        self._others_running = others_running
        # While PostgreSQL is down, writes are retried until it is back unless the worker is
        # shutting down (then for db_retry_seconds at most): an outage costs no run.
        self._worker_stopping = stopping
        self._queue: queue.SimpleQueue[Completion | None] = queue.SimpleQueue()
        self._released: list[Ready] = []  # children queued by the batch being completed

    # -- asynchronous use (the worker) -------------------------------------------------------

    def submit(self, completion: Completion) -> None:
        """Queue a completion for the completer thread."""
        self._queue.put(completion)

    def wake(self) -> None:
        """The stop sentinel goes after every queued completion: they are all written first."""
        self._queue.put(None)

    def run(self) -> None:
        """Complete batches until the stop sentinel."""
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
        decided = [self._decide(c) for c in batch]
        self._released = []
        written = self._with_db_retries(lambda: self._write([f for f, _ in decided]))
        self._after_commit(batch, [r for _, r in decided], written)
        self._send_released()
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

    def _write(self, finishes: list[Finish]) -> dict[uuid.UUID, JobStatus]:
        """One statement for the batch; if PostgreSQL refuses it, row by row, so one odd
        outcome cannot drop its batch-mates' (it is stored as a failure saying why)."""
        # A retry of a finish that did commit writes nothing (the rows are no longer
        # 'running'): the outcome counts as lost, its message is redelivered and then deleted
        # as a duplicate of a finished job. Nothing is lost either way.
        try:
            return self._finish(finishes)
        except DatabaseUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a value PostgreSQL refuses (DataError)
            if len(finishes) > 1:
                log.warning(
                    "a batch of %d outcomes was refused; writing them one by one: %s",
                    len(finishes),
                    exc,
                )
                written: dict[uuid.UUID, JobStatus] = {}
                for finish in finishes:
                    try:
                        written.update(self._write([finish]))
                    except DatabaseUnavailable:
                        raise
                    except Exception:  # noqa: BLE001 - its message is redelivered
                        log.exception(
                            "could not record an outcome even as a failure",
                            extra={"job_id": str(finish.claimed.job_id)},
                        )
                return written
            return self._finish([_unstorable(finishes[0], exc)])

    def _finish(self, finishes: list[Finish]) -> dict[uuid.UUID, JobStatus]:
        def work(conn: Any) -> tuple[dict[uuid.UUID, JobStatus], list[Ready]]:
            # Fresh per try: a transaction run again must not send children twice.
            released: list[Ready] = []
            written = transitions.finish_many(conn, self._worker_id, finishes, released=released)
            return written, released

        # A batch without workflow jobs is one statement (children are queued by a second
        # one in the same transaction): no BEGIN/COMMIT round trips.
        atomic = any(f.claimed.in_workflow for f in finishes)
        written, released = self._db.run(work, atomic=atomic)
        self._released.extend(released)  # committed: theirs to send
        return written

    def _decide(self, c: Completion) -> tuple[Finish, policy.Recorded]:
        failure = c.outcome.failure
        recorded = policy.finished_attempt(
            failure,
            failures=c.job.failures,
            max_attempts=c.max_attempts,
            backoff=self._backoff_for(c.job.task),
            rnd=self._jitter(),
        )
        finish = Finish(
            c.job,
            recorded.status,
            recorded.outcome,
            result=c.outcome.result if failure is None else None,
            error=failure.message if failure is not None else None,
            traceback=failure.traceback if failure is not None else None,
            counts=recorded.counts,
            delay=recorded.delay,
            dead_letter=recorded.dead_letter,
        )
        return finish, recorded

    def _after_commit(
        self,
        batch: list[Completion],
        recorded: list[policy.Recorded],
        written: dict[uuid.UUID, JobStatus],
    ) -> None:
        deletes: list[Message] = []
        resend: list[Outgoing] = []
        for c, how in zip(batch, recorded, strict=True):
            status = written.get(c.job.job_id)
            if status is None:
                continue
            decision = policy.after_finish(
                how if status == how.status else policy.Recorded(status, "")
            )
            if decision.resend is not None:
                delay = int(min(MAX_DELAY_SECONDS, decision.resend + 0.999))
                resend.append(
                    Outgoing(c.job.job_id, c.job.trace_id, delay, c.job.priority, c.job.queue)
                )
            deletes.append(c.message)
        # The job states are committed: if an SQS call fails, the message reappears later
        # and is handled as a duplicate of a finished (or retrying) job, and a retry whose
        # fresh message was not sent is sent by the dispatcher. Nothing is lost.
        if resend or deletes:
            # A Settle: what queues up behind a slow SQS is merged into one turn (after_commit).
            self.actions.submit(Settle(resend, deletes, self._published))

    def _published(self, sent: list[uuid.UUID]) -> None:
        """On the after-commit thread: the fresh messages SQS took are marked sent."""
        self._db.run(lambda conn: queries.mark_published(conn, sent), atomic=False)

    def _send_released(self) -> None:
        """Workflow children queued by this batch's commit: send them (a failed send is
        re-sent by the dispatcher, which looks for queued jobs without a confirmed send)."""
        ready, self._released = self._released, []
        if ready:
            self.actions.submit(lambda sqs: self._send_ready(sqs, ready))

    def _send_ready(self, sqs: SqsQueue, ready: list[Ready]) -> None:
        try:
            out = [Outgoing(r.id, r.trace_id, 0, r.priority, r.queue) for r in ready]
            sent = sqs.send_batch(out)
            self._db.run(lambda conn: queries.mark_published(conn, sent), atomic=False)
        except JobqError as exc:
            log.warning("sending %d released workflow job(s) failed: %s", len(ready), exc)

    def _with_db_retries(self, write: Callable[[], T]) -> T:
        """Retry a write while PostgreSQL is unavailable (the heartbeat keeps the message ours)."""
        stopping = self._worker_stopping
        deadline = None
        if stopping is None or stopping.is_set():
            deadline = time.monotonic() + self._db_retry_seconds
        return Backoff(0.2, 2.0, 5.0).retry(
            write,
            what="completing (database unavailable)",
            deadline=deadline,
            retry_on=(DatabaseUnavailable,),
        )


def _unstorable(finish: Finish, exc: BaseException) -> Finish:
    """A run whose outcome PostgreSQL refused, recorded as a permanent failure saying so."""
    reason = safe_text(f"the run's outcome could not be stored: {describe(exc)}")
    return Finish(finish.claimed, JobStatus.FAILED, "failed", error=reason, counts=True)
