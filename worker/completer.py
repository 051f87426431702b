"""Completer: record the outcome with a guarded update, then delete or re-time the message."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from app.db import translate_db_errors
from app.errors import DatabaseUnavailable, JobqError
from app.jobs import transitions
from app.jobs.states import JobStatus
from app.jobs.transitions import Claimed
from app.queue import Message, SqsQueue
from worker.executor import Outcome
from worker.retry import backoff_seconds, is_final_attempt

log = logging.getLogger("jobq.completer")
T = TypeVar("T")


class Completer:
    """Turns an Outcome into job state and an SQS action, in that order."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        sqs: SqsQueue,
        worker_id: str,
        *,
        backoff_base: float,
        backoff_cap: float,
        db_retry_seconds: float = 60.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._sessions = sessions
        self._sqs = sqs
        self._worker_id = worker_id
        self._base = backoff_base
        self._cap = backoff_cap
        self._db_retry_seconds = db_retry_seconds
        self._jitter = jitter

    def complete(
        self,
        message: Message,
        job: Claimed,
        outcome: Outcome,
        max_attempts: int,
        *,
        release: bool = False,
    ) -> str:
        """Record the outcome; return the status written ('' if this worker lost the job).

        `release` makes a retry visible at once instead of after a backoff (shutdown).
        """
        if outcome.ok:
            return self._finish(message, job, JobStatus.SUCCEEDED, "succeeded", outcome.result)
        failure = outcome.failure
        assert failure is not None
        if failure.retryable and not is_final_attempt(job.attempt, max_attempts):
            return self._finish(
                message,
                job,
                JobStatus.RETRYING,
                failure.outcome,
                None,
                failure.message,
                release=release,
            )
        return self._finish(
            message,
            job,
            JobStatus.FAILED,
            failure.outcome,
            None,
            failure.message,
            retryable=failure.retryable,
        )

    def _finish(
        self,
        message: Message,
        job: Claimed,
        status: JobStatus,
        outcome: str,
        result: object,
        error: str | None = None,
        *,
        retryable: bool = True,
        release: bool = False,
    ) -> str:
        def write() -> JobStatus | None:
            with translate_db_errors(), self._sessions.begin() as session:
                return transitions.finish(
                    session,
                    job,
                    self._worker_id,
                    status=status,
                    outcome=outcome,
                    result=result,
                    error=error,
                )

        if not self._with_db_retries(write):
            # Our lease expired and another worker took the job: its message is theirs now.
            log.warning(
                "lost the job before completing; outcome dropped",
                extra={"job_id": str(job.job_id), "attempt": job.attempt},
            )
            return ""
        self._after_commit(message, job, status, retryable, release)
        return status.value

    def _after_commit(
        self, message: Message, job: Claimed, status: JobStatus, retryable: bool, release: bool
    ) -> None:
        try:
            if status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED) or (
                status == JobStatus.FAILED and not retryable
            ):
                self._sqs.delete(message)
            elif status == JobStatus.RETRYING:
                delay = (
                    0.0
                    if release
                    else backoff_seconds(
                        job.attempt, base=self._base, cap=self._cap, jitter=self._jitter()
                    )
                )
                self._sqs.change_visibility(message, delay)
            else:
                # Exhausted: leave the message and make it visible, so the queue's redrive
                # policy moves it to the dead-letter queue on its next receive.
                self._sqs.change_visibility(message, 0)
        except JobqError as exc:
            # The job state is committed; the message reappears later and is handled as a
            # duplicate of a finished (or retrying) job. Nothing is lost.
            log.warning(
                "SQS action after commit failed: %s", exc, extra={"job_id": str(job.job_id)}
            )

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
