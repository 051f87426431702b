"""Consumer: long-poll SQS for no more messages than there are free slots."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from app.errors import JobqError
from app.queue import Message, SqsQueue
from worker.inflight import InFlight

log = logging.getLogger("jobq.consumer")


class Consumer:
    """Receives messages into free slots and hands each to `dispatch`."""

    def __init__(
        self,
        sqs: SqsQueue,
        inflight: InFlight,
        dispatch: Callable[[Message], None],
        *,
        wait_seconds: int,
    ) -> None:
        self._sqs = sqs
        self._inflight = inflight
        self._dispatch = dispatch
        self._wait = wait_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            free = self._inflight.wait_free(timeout=1.0)
            if free == 0 or self._stop.is_set():
                continue
            try:
                messages = self._sqs.receive(free, self._wait)
                delay = 0.5
            except JobqError as exc:
                log.warning("receive failed; backing off %.1f s: %s", delay, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            if self._stop.is_set():
                # Arrived after shutdown began: give them back at once, unstarted.
                self._release(messages)
                return
            for message in messages:
                self._dispatch(message)

    def _release(self, messages: list[Message]) -> None:
        if not messages:
            return
        try:
            self._sqs.change_visibility_batch(messages, 0)
        except JobqError as exc:
            log.warning("could not release %d message(s): %s", len(messages), exc)

    def start(self) -> None:
        """Poll in a thread."""
        self._thread = threading.Thread(target=self._run, name="jobq-consumer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop receiving (an in-progress long poll finishes and its messages are released)."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Wait for the poll loop to end; True if it did."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()
