"""Dead-letter consumer: every message that reaches the DLQ ends with its job `failed`."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from app.db import translate_db_errors
from app.errors import JobqError
from app.jobs import transitions
from app.jobs.states import JobStatus
from app.queue import Message, SqsQueue
from app.sqs_limits import MAX_BATCH

log = logging.getLogger("jobq.dlq")

DLQ_REASON = "exhausted retries, moved to dead-letter queue"


class DeadLetterConsumer:
    """Marks dead-lettered jobs failed (committed first), then deletes the DLQ message."""

    def __init__(
        self, sqs: SqsQueue, sessions: sessionmaker[Session], dlq_url: str, *, wait_seconds: int
    ) -> None:
        self._sqs = sqs
        self._sessions = sessions
        self._dlq_url = dlq_url
        self._wait = wait_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def handle(self, message: Message) -> None:
        """Settle one dead-lettered message."""
        if message.job_id is None:
            log.warning("deleting a DLQ message that names no job")
            self._sqs.delete(message)
            return
        with translate_db_errors(), self._sessions.begin() as session:
            current = transitions.view(session, message.job_id)
            live = current is not None and current.status == JobStatus.RUNNING
            if live and current is not None and current.lease_seconds_left > 0:
                # A live worker still runs it (this was a duplicate): look again later.
                self._sqs.change_visibility(message, current.lease_seconds_left + 1)
                return
            if current is not None and current.status == JobStatus.FAILED:
                transitions.mark_dead_lettered(session, message.job_id)
            elif current is not None and current.status not in (
                JobStatus.SUCCEEDED,
                JobStatus.CANCELLED,
            ):
                transitions.fail_exhausted(session, message.job_id, DLQ_REASON, dead_letter=True)
        log.info("dead-lettered job settled", extra={"job_id": str(message.job_id)})
        self._sqs.delete(message)

    def run_once(self) -> int:
        """Receive and settle one batch; return how many messages were received."""
        messages = self._sqs.receive(MAX_BATCH, self._wait, queue_url=self._dlq_url)
        for message in messages:
            try:
                self.handle(message)
            except JobqError as exc:
                log.warning("could not settle DLQ message (it will come back): %s", exc)
        return len(messages)

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self.run_once()
                delay = 0.5
            except Exception as exc:  # noqa: BLE001 - keep consuming after any one failure
                log.warning("DLQ pass failed; backing off %.1f s: %s", delay, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def start(self) -> None:
        """Consume in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="jobq-dlq", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current poll."""
        self._stop.set()
