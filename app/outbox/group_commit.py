"""Group commit: concurrent submissions share one INSERT and one COMMIT."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import DatabaseUnavailable
from app.jobs.schemas import JobOut
from app.loops import BackgroundLoop, take_batch

log = logging.getLogger("jobq.jobs")

Row = dict[str, Any]


@dataclass(slots=True)
class _Waiter:
    row: Row
    future: asyncio.Future[JobOut]
    loop: asyncio.AbstractEventLoop


class GroupCommit(BackgroundLoop):
    """Commits the rows of concurrent submissions together.

    Each of `threads` threads takes every row waiting (up to `max_rows`) and writes them with
    `insert` (one multi-row INSERT, one COMMIT); each waiter hears back only after that commit,
    so a 201 still means durable. Under load many requests share one transaction and one fsync;
    alone, a request waits for nothing but its own commit. A batch that fails for a reason other
    than the database being unreachable is retried row by row, so only the bad row fails.
    `after_commit` runs once per committed batch (publishing) and must not raise.
    """

    def __init__(
        self,
        insert: Callable[[list[Row]], list[JobOut]],
        after_commit: Callable[[list[Row]], None],
        *,
        threads: int = 2,
        max_rows: int = 500,
    ) -> None:
        super().__init__("jobq-insert", threads=max(1, threads))
        self._threads_wanted = max(1, threads)
        self._insert = insert
        self._after_commit = after_commit
        self._max_rows = max(1, max_rows)
        self._queue: queue.SimpleQueue[_Waiter | None] = queue.SimpleQueue()

    def submit(self, row: Row) -> asyncio.Future[JobOut]:
        """Queue one row (from the event loop); the future resolves once it is committed."""
        if self.stopping.is_set():
            raise DatabaseUnavailable("the API is shutting down")
        self.start()  # threads start with the first submission (a no-op after that)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JobOut] = loop.create_future()
        self._queue.put(_Waiter(row, future, loop))
        return future

    def wake(self) -> None:
        """One stop sentinel per thread, after every row already queued."""
        for _ in range(self._threads_wanted):
            self._queue.put(None)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop the threads."""
        self.stopping.set()
        self.stop(timeout)

    def run(self) -> None:
        """Commit batches until the stop sentinel."""
        while True:
            batch, stop = take_batch(self._queue, self._max_rows)
            if batch:
                self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Waiter]) -> None:
        rows = [w.row for w in batch]
        try:
            views = self._insert(rows)
        except DatabaseUnavailable as exc:
            self._settle(batch, [None] * len(batch), [copy.copy(exc) for _ in batch])
            return
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request
            if len(batch) == 1:
                self._settle(batch, [None], [exc])
            else:
                for waiter in batch:  # find the bad row; the others still commit
                    self._commit([waiter])
            return
        self._settle(batch, views, [None] * len(batch))
        try:
            self._after_commit(rows)
        except Exception:  # noqa: BLE001 - committed rows are published by the dispatcher
            log.exception("publishing committed jobs failed; the dispatcher will send them")

    @staticmethod
    def _settle(
        batch: list[_Waiter], views: Sequence[JobOut | None], errors: Sequence[BaseException | None]
    ) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, ...]]] = {}
        for waiter, view, error in zip(batch, views, errors, strict=True):
            by_loop.setdefault(waiter.loop, []).append((waiter.future, view, error))
        for loop, outcomes in by_loop.items():
            # A closed loop: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, outcomes)


def _resolve(outcomes: list[tuple[Any, ...]]) -> None:
    for future, view, error in outcomes:
        if future.done():  # the request was cancelled; its row is committed all the same
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(view)
