"""SQS work that follows a committed outcome (deletes, fresh retry messages), on its own thread.

The completer commits outcomes and moves on; what SQS must do about them waits here. A hung
SQS (blackholed, throttled) therefore delays only these calls, never the recording of the
next outcomes: before, a hung DeleteMessageBatch (30 s x 3 tries) held every later outcome
uncommitted, so a worker killed meanwhile lost finished work and its jobs ran again. Nothing
here is needed for correctness: a message not deleted comes back and is settled as a
duplicate of a finished job, a fresh message not sent is sent by the dispatcher.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable

from app.errors import JobqError
from app.loops import BackgroundLoop
from app.sqs.queue import SqsQueue

log = logging.getLogger("jobq.completer")

Action = Callable[[SqsQueue], None]


class AfterCommit(BackgroundLoop):
    """Runs submitted SQS actions in order on one thread (inline when not started)."""

    def __init__(self, sqs: SqsQueue) -> None:
        super().__init__("jobq-after-commit")
        self._sqs = sqs
        self._queue: queue.SimpleQueue[Action | None] = queue.SimpleQueue()

    def use(self, sqs: SqsQueue) -> None:
        """Send later actions through another client (short timeouts; tests inject faults)."""
        self._sqs = sqs

    def submit(self, action: Action) -> None:
        """Queue `action` (or run it now if the thread is not running: synchronous use)."""
        if self.started and not self.stopping.is_set():
            self._queue.put(action)
        else:
            self._do(action)

    def pending(self) -> int:
        """Actions queued and not yet done (approximate)."""
        return self._queue.qsize()

    def wake(self) -> None:
        """The stop sentinel goes after the queued actions: they are all tried first."""
        self._queue.put(None)

    def run(self) -> None:
        """Do actions until the stop sentinel."""
        while (action := self._queue.get()) is not None:
            self._do(action)

    def _do(self, action: Action) -> None:
        try:
            action(self._sqs)
        except JobqError as exc:
            log.warning("SQS action after commit failed (the message comes back): %s", exc)
        except Exception:
            log.exception("SQS action after commit crashed (the message comes back)")
