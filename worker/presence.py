"""The worker's row in the workers table, refreshed every few seconds (the dashboard's
workers view: who runs, where, which version, how busy; a row that stops moving is dead)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from sqlalchemy.orm import Session, sessionmaker

from app.db import translate_db_errors
from app.jobs import workers
from app.loops import PeriodicLoop

log = logging.getLogger("jobq.presence")


def jobq_version() -> str:
    """The installed jobq's version ("unknown" when run from a source tree without metadata)."""
    try:
        return version("jobq")
    except PackageNotFoundError:
        return "unknown"


class Presence(PeriodicLoop):
    """Every `interval` s: upsert this worker's row with the number of jobs it holds."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        worker_id: str,
        *,
        concurrency: int,
        running: Callable[[], int],
        interval: float,
    ) -> None:
        super().__init__("jobq-presence", interval=interval, logger=log)
        self._sessions = sessions
        self._worker_id = worker_id
        self._concurrency = concurrency
        self._running = running
        self._interval = interval
        self._host = socket.gethostname()
        self._version = jobq_version()

    def tick(self) -> float | None:
        """One beat (a failure is logged and retried with backoff by PeriodicLoop)."""
        with translate_db_errors(), self._sessions.begin() as session:
            workers.beat(
                session,
                worker_id=self._worker_id,
                host=self._host,
                version=self._version,
                concurrency=self._concurrency,
                running=self._running(),
                interval=self._interval,
            )
        return None

    def leave(self, timeout: float = 1.0) -> None:
        """Stop beating and mark the row stopped, waiting at most `timeout` s: shutdown must
        fit its grace even with PostgreSQL down (the row then just looks dead later)."""
        self.signal_stop()
        done = threading.Thread(target=self._mark_stopped, name="jobq-presence-stop", daemon=True)
        done.start()
        done.join(timeout)

    def _mark_stopped(self) -> None:
        try:
            with translate_db_errors(), self._sessions.begin() as session:
                workers.stopped(session, self._worker_id)
        except Exception as exc:  # best effort, see leave()
            log.warning("could not mark worker stopped: %s", exc)
