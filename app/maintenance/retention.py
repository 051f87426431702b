"""Retention: finished jobs older than JOBQ_RETENTION_DAYS are deleted with their attempts."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from app.db import translate_db_errors
from app.jobs import queries
from app.loops import PeriodicLoop

log = logging.getLogger("jobq.retention")

PRUNE_BATCH = 1000  # rows per statement: short transactions, bounded locks
PRUNE_EVERY_SECONDS = 60.0


class Retention(PeriodicLoop):
    """Deletes finished jobs past retention, a batch per statement, once a minute."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        retention_days: float,
        interval_seconds: float = PRUNE_EVERY_SECONDS,
    ) -> None:
        super().__init__("jobq-retention", interval=interval_seconds, logger=log)
        self._sessions = sessions
        self._days = retention_days

    def prune(self) -> int:
        """Delete finished jobs past retention until none are left; return how many."""
        total = 0
        while True:
            with translate_db_errors(), self._sessions.begin() as session:
                deleted = queries.prune_finished(
                    session, older_than_days=self._days, limit=PRUNE_BATCH
                )
            total += deleted
            if deleted < PRUNE_BATCH or self.stopping.is_set():
                break
        if total:
            log.info("retention pruned %d finished job(s)", total)
        return total

    def tick(self) -> float | None:
        """One prune."""
        self.prune()
        return None
