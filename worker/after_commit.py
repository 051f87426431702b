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
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from app.errors import JobqError
from app.loops import BackgroundLoop, take_batch
from app.sqs.queue import Message, Outgoing, SqsQueue

log = logging.getLogger("jobq.completer")

# Actions drained and merged per turn at most (each settles up to 100 messages).
MAX_MERGED = 10


@dataclass
class Settle:
    """A batch's fresh messages (then marked sent with `published`), then its deletes."""

    resend: list[Outgoing]
    deletes: list[Message]
    published: Callable[[list[uuid.UUID]], None] = field(repr=False)

    def __call__(self, sqs: SqsQueue) -> None:
        """Send, mark sent, delete: in that order."""
        if self.resend:
            self.published(sqs.send_batch(self.resend))
        if self.deletes and sqs.delete_batch(self.deletes):
            log.warning("SQS refused some deletes; those messages come back as duplicates")


Action = Callable[[SqsQueue], None]


def merged(actions: list[Action]) -> list[Action]:
    """The queued Settles as one (their sends, then their deletes), the other actions as they are.

    One turn then costs one round trip (the calls go out `calls_in_flight` at once) however
    many batches the completer committed meanwhile: one action per turn fell behind at
    ~40 batches/s behind a 20 ms SQS (the deletes lagged by seconds, growing).
    """
    settles = [a for a in actions if isinstance(a, Settle)]
    if len(settles) < 2:
        return actions
    rest = [a for a in actions if not isinstance(a, Settle)]
    sends = [s for s in settles if s.resend]
    # A failed send keeps only its own batches' messages (they come back and the dispatcher
    # sends the retry); the deletes of batches that sent nothing go ahead regardless.
    plain = Settle(
        [], [m for s in settles if not s.resend for m in s.deletes], settles[0].published
    )
    return [*rest, *sends, plain]


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
        """Do actions until the stop sentinel, merging what queued up meanwhile."""
        while True:
            actions, stop = take_batch(self._queue, MAX_MERGED)
            for action in merged(actions):
                self._do(action)
            if stop:
                return

    def _do(self, action: Action) -> None:
        try:
            action(self._sqs)
        except JobqError as exc:
            log.warning("SQS action after commit failed (the message comes back): %s", exc)
        except Exception:
            log.exception("SQS action after commit crashed (the message comes back)")
