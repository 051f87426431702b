"""Consumer: long-poll SQS for no more messages than there are free slots."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence

from app.errors import JobqError
from app.queue import Message, SqsQueue
from worker.inflight import InFlight

log = logging.getLogger("jobq.consumer")

# With several priority queues an idle worker long-polls one of them this long, then looks at
# all again, so a message on any queue waits at most about this long.
MULTI_QUEUE_WAIT_SECONDS = 2


def weighted_order(
    queues: Sequence[tuple[str, int]], rnd: Callable[[], float] = random.random
) -> list[str]:
    """Queues in a random order biased by weight (weighted sampling without replacement).

    High is looked at first most of the time, but low still comes first now and then, so a
    busy high queue slows low jobs down without starving them.
    """
    pool = [(url, w) for url, w in queues if w > 0]
    order: list[str] = []
    while pool:
        total = sum(w for _, w in pool)
        pick = rnd() * total
        for i, (url, w) in enumerate(pool):
            pick -= w
            if pick < 0 or i == len(pool) - 1:
                order.append(url)
                pool.pop(i)
                break
    return order


class Consumer:
    """Receives messages into free slots and hands each receive's batch to `dispatch`."""

    def __init__(
        self,
        sqs: SqsQueue,
        inflight: InFlight,
        dispatch: Callable[[list[Message]], None],
        *,
        wait_seconds: int,
        queues: Sequence[tuple[str, int]] | None = None,
    ) -> None:
        self._queues = list(queues or [(sqs.url, 1)])
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
                messages = self._receive(free)
                delay = 0.5
            except Exception as exc:  # noqa: BLE001 - the poll loop must outlive any one failure
                if isinstance(exc, JobqError):
                    log.warning("receive failed; backing off %.1f s: %s", delay, exc)
                else:
                    log.exception("receive crashed; backing off %.1f s", delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            if self._stop.is_set():
                # Arrived after shutdown began: give them back at once, unstarted.
                self._release(messages)
                return
            if messages:
                self._dispatch(messages)

    def _receive(self, free: int) -> list[Message]:
        if len(self._queues) == 1:
            return self._sqs.receive(free, self._wait, queue_url=self._queues[0][0])
        order = weighted_order(self._queues)
        for url in order:
            messages = self._sqs.receive(free, 0, queue_url=url)
            if messages:
                return messages
        wait = min(self._wait, MULTI_QUEUE_WAIT_SECONDS)
        return self._sqs.receive(free, wait, queue_url=order[0])

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
