"""Consumer: long-poll SQS for no more messages than there are free slots."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

from app.errors import JobqError
from app.loops import PeriodicLoop
from app.sqs.limits import MAX_BATCH
from app.sqs.queue import Message, SqsQueue
from worker.gate import DatabaseGate
from worker.inflight import Entry, InFlight

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


class Consumer(PeriodicLoop):
    """Pollers that receive messages into reserved free slots and hand each batch to `dispatch`.

    Each poller reserves slots, receives at most that many messages, admits them, and runs
    `dispatch` (the claim) itself; with two or more pollers one poller's ReceiveMessage is in
    flight while another's batch is being claimed.
    """

    def __init__(
        self,
        sqs: SqsQueue,
        inflight: InFlight,
        dispatch: Callable[[list[Entry]], None],
        *,
        wait_seconds: int,
        queues: Sequence[tuple[str, int]] | None = None,
        pollers: int = 1,
        linger: float = 0.0,
        batch: int = MAX_BATCH,
        gate: DatabaseGate | None = None,
    ) -> None:
        super().__init__("jobq-consumer", interval=0, threads=max(1, pollers), logger=log)
        self._queues = list(queues or [(sqs.url, 1)])
        self._sqs = sqs
        self._inflight = inflight
        self._dispatch = dispatch
        self._wait = wait_seconds
        self._linger = linger
        self._batch = batch
        self._gate = gate

    def tick(self) -> float | None:
        """Reserve free slots, receive at most that many messages, admit and dispatch them."""
        if self._gate is not None and not self._gate.wait_open(1.0):
            return 0  # PostgreSQL is down: receiving now would only burn receive counts
        reserved = self._inflight.reserve(
            MAX_BATCH, batch=self._batch, linger=self._linger, timeout=1.0
        )
        if reserved == 0:
            return 0
        try:
            messages = [] if self.stopping.is_set() else self._receive(reserved)
        except Exception:
            self._inflight.admit([], reserved)
            raise  # the loop logs it and backs off
        if self.stopping.is_set():
            # Arrived after shutdown began: give them back at once, unstarted.
            self._inflight.admit([], reserved)
            self._release(messages)
            return 0
        entries = self._inflight.admit(messages, reserved)
        if entries:
            self._dispatch(entries)
        return 0

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
