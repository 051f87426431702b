"""Wake long polls when jobs end: one PostgreSQL LISTEN connection per API process.

A trigger (migration 0004) sends `NOTIFY jobq_job_final, '<job id>'` whenever any writer moves
a job to succeeded, failed or cancelled. `FinalListener` holds one connection in LISTEN on a
background thread and resolves the asyncio futures of the requests waiting for that job on
their own event loops: no table polling and no thread per waiting request. Every API process
runs its own listener, and PostgreSQL delivers each notification to all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sqlalchemy import Engine

from app.loops import BackgroundLoop, Backoff

CHANNEL = "jobq_job_final"
log = logging.getLogger("jobq.jobs.notify")


def listen_connection(engine: Engine) -> Any:
    """A psycopg2 connection of the engine's kind, detached from its pool, in autocommit."""
    pooled = engine.raw_connection()
    conn: Any = pooled.driver_connection
    pooled.detach()  # held for the process's life: it must never go back to the pool
    conn.autocommit = True  # LISTEN takes effect at once, and notifications arrive between queries
    return conn


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class FinalListener(BackgroundLoop):
    """LISTEN on CHANNEL and wake the futures registered by `watch(job_id)`.

    Started by the first `watch` (an API that never long-polls holds no extra connection).
    Whenever LISTEN is (re-)established every registered waiter is woken too: notifications
    sent while there was no connection are lost, so each waiter reads its job again.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        keepalive: float = 30.0,
        backoff: Callable[[], Backoff] = lambda: Backoff(initial=0.2, cap=5.0),
        channel: str = CHANNEL,
        name: str = "jobq-final-listener",
    ) -> None:
        super().__init__(name)
        self._channel = channel
        self._connect = connect
        self._keepalive = keepalive
        self._make_backoff = backoff
        self._lock = threading.Lock()
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._closed = False
        # stop() must interrupt select(): the loop also watches one end of this pair.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.listening = threading.Event()
        self.backend_pid: int | None = None

    # -- the request side (event loop threads) ---------------------------------------------

    @contextlib.contextmanager
    def watch(self, job_id: uuid.UUID) -> Iterator[asyncio.Future[None]]:
        """A future resolved when `job_id` may have become final; register before reading it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        key = str(job_id)
        with self._lock:
            self._waiters.setdefault(key, set()).add(future)
        if not self._closed and not self.started:
            self.start()
        try:
            yield future
        finally:
            with self._lock:
                waiting = self._waiters.get(key)
                if waiting is not None:
                    waiting.discard(future)
                    if not waiting:
                        del self._waiters[key]

    @property
    def closed(self) -> bool:
        """True once close() ran: nothing will wake a waiter any more."""
        return self._closed

    def waiting(self) -> int:
        """How many futures are registered (for tests and diagnostics)."""
        with self._lock:
            return sum(len(w) for w in self._waiters.values())

    # -- the listener thread -----------------------------------------------------------------

    def _wake(self, job_ids: Iterable[str] | None) -> None:
        """Resolve the futures of these jobs (None: of every job) on their own loops."""
        with self._lock:
            if job_ids is None:
                futures = [f for w in self._waiters.values() for f in w]
                self._waiters.clear()
            else:
                futures = [f for k in job_ids for f in self._waiters.pop(k, ())]
        for future in futures:
            with contextlib.suppress(RuntimeError):  # that request's loop has closed
                future.get_loop().call_soon_threadsafe(_resolve, future)

    def run(self) -> None:
        """Connect, LISTEN and dispatch until stopped; reconnect with backoff on any failure."""
        backoff = self._make_backoff()
        while not self.stopping.is_set():
            conn = None
            try:
                conn = self._connect()
                self._listen(conn, backoff)
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect, never die
                self.listening.clear()
                delay = backoff.next()
                log.warning("LISTEN %s lost; reconnecting in %.1f s: %s", self._channel, delay, exc)
                self.stopping.wait(delay)
            finally:
                self.listening.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()

    def _listen(self, conn: Any, backoff: Backoff) -> None:
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {self._channel}")
        self.backend_pid = conn.get_backend_pid()
        backoff.reset()
        # LISTEN is in effect: say so before the resync wakes every waiter, so a woken waiter
        # never finds the listener still marked down (a CI run saw exactly that).
        self.listening.set()  # from here on, only a NOTIFY (or close) wakes a waiter
        self._wake(None)
        while not self.stopping.is_set():
            ready, _, _ = select.select([conn, self._wake_r], [], [], self._keepalive)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    self._wake_r.recv(4096)
                continue
            if ready:
                conn.poll()
            else:
                # Idle: a round trip proves the connection alive (a silently dropped one
                # would otherwise leave the waiters asleep until their timeouts).
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
            ids = {n.payload for n in conn.notifies}
            conn.notifies.clear()
            if ids:
                self._wake(ids)

    def wake(self) -> None:
        """Interrupt the thread's select() so it sees `stopping`."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread for good, waking every waiter (they answer with the job as it is)."""
        self._closed = True
        self.stop(timeout)
        self._wake(None)
        self._wake_r.close()
        self._wake_w.close()
