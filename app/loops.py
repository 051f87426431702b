"""Background loops: one start/stop lifecycle, one backoff helper, natural batching.

Every background thread in jobq (publisher, dispatcher, group commit, retention, completer,
heartbeat, pollers, DLQ consumer, maintenance services) is a `BackgroundLoop`; periodic ones are
`PeriodicLoop`s, which retry a failing pass with a `Backoff` instead of dying or spinning.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from app.errors import JobqError

T = TypeVar("T")
log = logging.getLogger("jobq.loops")


class Backoff:
    """Exponential delays for retrying: `initial`, then x`factor` per failure up to `cap`."""

    def __init__(self, initial: float = 0.5, factor: float = 2.0, cap: float = 30.0) -> None:
        self.initial = initial
        self.factor = factor
        self.cap = cap
        self._next = initial

    def next(self) -> float:
        """The delay to wait now; the one after it is longer (up to the cap)."""
        delay = self._next
        self._next = min(self.cap, self._next * self.factor)
        return delay

    def reset(self) -> None:
        """Back to the initial delay (after a success)."""
        self._next = self.initial

    def retry(
        self,
        work: Callable[[], T],
        *,
        what: str,
        stop: threading.Event | None = None,
        deadline: float | None = None,
        retry_on: tuple[type[BaseException], ...] = (JobqError,),
    ) -> T:
        """`work()` until it succeeds, waiting `next()` after each failure in `retry_on`.

        Gives up (re-raising the last failure) when waiting would pass `deadline` (a
        time.monotonic() instant) or once `stop` is set.
        """
        while True:
            try:
                result = work()
            except retry_on as exc:
                delay = self.next()
                late = deadline is not None and time.monotonic() + delay > deadline
                if late or (stop is not None and stop.is_set()):
                    raise
                log.warning("%s failed; retrying in %.1f s: %s", what, delay, exc)
                if stop is not None:
                    if stop.wait(delay):
                        raise
                else:
                    time.sleep(delay)  # backoff between attempts, not synchronisation
                continue
            self.reset()
            return result


class BackgroundLoop:
    """A named set of daemon threads that each run `run()` until `stop()`.

    Subclasses implement `run()` (which must return once `stopping` is set) and, when `run()`
    blocks on something other than `stopping` (a queue), `wake()` to unblock it.
    """

    def __init__(self, name: str, *, threads: int = 1) -> None:
        self.name = name
        self.stopping = threading.Event()
        self._count = max(1, threads)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def run(self) -> None:
        """The body of each thread."""
        raise NotImplementedError

    def wake(self) -> None:
        """Unblock every thread's `run()` so it sees `stopping` (default: nothing to do)."""

    def start(self) -> None:
        """Start the threads (a no-op if they run already)."""
        with self._lock:
            if self._threads:
                return
            self.stopping.clear()
            for i in range(self._count):
                name = self.name if self._count == 1 else f"{self.name}-{i}"
                thread = threading.Thread(target=self._main, name=name, daemon=True)
                self._threads.append(thread)
                thread.start()

    def _main(self) -> None:
        try:
            self.run()
        except Exception:
            log.exception("%s crashed", self.name)

    @property
    def started(self) -> bool:
        """True once start() ran (and until stop())."""
        return bool(self._threads)

    def alive(self) -> bool:
        """True while every thread is running."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def signal_stop(self) -> None:
        """Ask the threads to stop without waiting for them."""
        self.stopping.set()
        if self._threads:
            self.wake()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` for the threads to end; True if they all did."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 5.0) -> bool:
        """Signal the threads, wait up to `timeout`; True if they all ended."""
        self.signal_stop()
        done = self.join(timeout)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
        return done


class PeriodicLoop(BackgroundLoop):
    """Calls `tick()` again and again: after `interval` seconds, or after what tick returns.

    A tick that raises is logged (a JobqError as a warning: a dependency is down) and the next
    one waits a growing `Backoff` delay, so a dead dependency costs a few calls, not a spin.
    """

    def __init__(
        self,
        name: str,
        *,
        interval: float,
        threads: int = 1,
        backoff: Callable[[], Backoff] = Backoff,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(name, threads=threads)
        self.interval = interval
        self._make_backoff = backoff
        self._log = logger or log

    def tick(self) -> float | None:
        """One pass; return seconds until the next (None: `interval`, 0: at once)."""
        raise NotImplementedError

    def run(self) -> None:
        """Tick until stopped, backing off on failures."""
        backoff = self._make_backoff()
        while not self.stopping.is_set():
            try:
                delay = self.tick()
                backoff.reset()
            except JobqError as exc:
                delay = backoff.next()
                self._log.warning("%s: pass failed; retrying in %.1f s: %s", self.name, delay, exc)
            except Exception:
                delay = backoff.next()
                self._log.exception("%s: pass crashed; retrying in %.1f s", self.name, delay)
            if delay is None:
                delay = self.interval
            if delay > 0:
                self.stopping.wait(delay)


def take_batch(source: queue.SimpleQueue[T | None], limit: int) -> tuple[list[T], bool]:
    """Wait for an item, then drain up to `limit` without waiting; (batch, stop).

    `None` in the queue is a stop sentinel: `stop` is True once one was taken. Under load the
    batch is everything that arrived during the previous batch's write; alone, it is one item.
    """
    first = source.get()
    if first is None:
        return [], True
    batch = [first]
    while len(batch) < limit:
        try:
            item = source.get_nowait()
        except queue.Empty:
            break
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False


class DaemonPool(BackgroundLoop):
    """`threads` daemon threads running submitted calls, in order of submission.

    Unlike concurrent.futures' pool, nothing waits for these threads at interpreter exit, so
    a process whose call is stuck (a handler that ignores cancellation) can still exit.
    """

    def __init__(self, name: str, threads: int) -> None:
        super().__init__(name, threads=threads)
        self._size = max(1, threads)
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()

    def submit(self, call: Callable[[], None]) -> None:
        """Run `call` on the next free thread (it must not raise)."""
        self._calls.put(call)

    def wake(self) -> None:
        """Stop sentinels after the calls already submitted."""
        for _ in range(self._size):
            self._calls.put(None)

    def run(self) -> None:
        """Run calls until the stop sentinel."""
        while (call := self._calls.get()) is not None:
            try:
                call()
            except Exception:
                log.exception("%s: a call crashed", self.name)
