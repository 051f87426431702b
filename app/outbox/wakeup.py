"""Publish transactionally enqueued jobs the moment their transaction commits.

`jobq.enqueue` inserts a job in the caller's transaction and issues
`NOTIFY jobq_outbox, '<job id>'` in it; PostgreSQL delivers that only if the transaction
commits. Every dispatcher LISTENs and publishes the named jobs at once (rows locked with SKIP
LOCKED and `published_at IS NULL`: one dispatcher sends each). A notification that reaches no
listener (no dispatcher running, a reconnect) is covered by the dispatcher's periodic pass over
unpublished rows, `dispatch_after_seconds` later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from app.jobs.notify import FinalListener

CHANNEL = "jobq_outbox"
log = logging.getLogger("jobq.dispatcher")


class OutboxWakeup(FinalListener):
    """LISTEN on CHANNEL and hand the notified job ids to `publish` (on this thread)."""

    def __init__(self, connect: Callable[[], Any], publish: Callable[[list[str]], int]) -> None:
        super().__init__(connect, channel=CHANNEL, name="jobq-outbox-listener")
        self._publish = publish

    def _wake(self, job_ids: Iterable[str] | None) -> None:
        if job_ids is None:
            return  # (re)connected: what was missed meanwhile is the periodic pass's
        try:
            self._publish(sorted(job_ids))
        except Exception as exc:  # noqa: BLE001 - the periodic pass sends them later
            log.warning("publishing enqueued jobs failed; the dispatcher will retry: %s", exc)
