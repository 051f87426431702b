"""Dead-letter consumer: settles every message SQS moved to the dead-letter queue.

SQS moves a message there once it was received maxReceiveCount times, which happens to a job
that keeps crashing its worker, but also to one whose receives failed for reasons that are not
its own (PostgreSQL down, duplicates). See worker.policy.dead_lettered for what happens.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from app.errors import JobqError
from app.loops import PeriodicLoop
from app.observability import metrics
from app.sqs.limits import MAX_BATCH
from app.sqs.queue import Message, SqsQueue
from worker import policy
from worker.settle import settle

log = logging.getLogger("jobq.dlq")


class DeadLetterConsumer(PeriodicLoop):
    """Fails crash-looping jobs, sends never-run ones back; then deletes the DLQ message."""

    def __init__(
        self,
        sqs: SqsQueue,
        sessions: sessionmaker[Session],
        dlq_url: str,
        *,
        wait_seconds: int,
        limits: policy.Limits | None = None,
    ) -> None:
        super().__init__("jobq-dlq", interval=0, logger=log)
        self._sqs = sqs
        self._sessions = sessions
        self._dlq_url = dlq_url
        self._wait = wait_seconds
        self._limits = limits or policy.Limits()

    def handle(self, message: Message) -> None:
        """Settle one dead-lettered message."""
        if message.job_id is None:
            log.warning("deleting a DLQ message that names no job")
            self._sqs.delete(message)
            return
        decision = settle(
            self._sessions,
            self._sqs,
            message,
            lambda current: policy.dead_lettered(current, self._limits),
        )
        extra = {"job_id": str(message.job_id)}
        if decision.sqs == policy.Sqs.DELETE:
            metrics.DLQ_ARRIVALS.inc()
        if decision.redelivered:
            metrics.DLQ_REDELIVERED.inc()
            log.warning("dead-lettered job had not finished: sent back to its queue", extra=extra)
        elif decision.fail_reason is not None:
            log.error("dead-lettered job failed: %s", decision.fail_reason, extra=extra)
        elif decision.sqs == policy.Sqs.DELETE:
            log.info("dead-lettered job settled", extra=extra)

    def run_once(self) -> int:
        """Receive and settle one batch; return how many messages were received."""
        messages = self._sqs.receive(MAX_BATCH, self._wait, queue_url=self._dlq_url)
        for message in messages:
            try:
                self.handle(message)
            except JobqError as exc:
                log.warning("could not settle DLQ message (it will come back): %s", exc)
        return len(messages)

    def tick(self) -> float | None:
        """One long poll of the DLQ and its settlement; the next poll at once."""
        self.run_once()
        return 0
