"""The workers table: each worker process heartbeats its row (worker/presence.py), and the
dashboard lists them, marking those whose heartbeat stopped as dead."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Index, Integer, String, func, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.db import Base

# A stopped or dead worker's row is kept this long for the dashboard, then deleted.
FORGET_AFTER_SECONDS = 24 * 3600


class WorkerRow(Base):
    """One worker process as it last reported itself."""

    __tablename__ = "workers"
    __table_args__ = (Index("ix_workers_last_seen", "last_seen_at"),)

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(64))
    concurrency: Mapped[int] = mapped_column(Integer)
    running: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # How often it promises to beat: a row older than a few intervals is a dead worker.
    interval_seconds: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def beat(
    session: Session,
    *,
    worker_id: str,
    host: str,
    version: str,
    concurrency: int,
    running: int,
    interval: float,
) -> None:
    """Insert or refresh this worker's row; forget rows nobody refreshed for a day."""
    values = {
        "id": worker_id,
        "host": host,
        "version": version,
        "concurrency": concurrency,
        "running": running,
        "interval_seconds": max(1, round(interval)),
    }
    stmt = pg_insert(WorkerRow).values(**values)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[WorkerRow.id],
            set_={"running": stmt.excluded.running, "last_seen_at": func.now()},
        )
    )
    session.execute(
        text("DELETE FROM workers WHERE last_seen_at < now() - make_interval(secs => :s)"),
        {"s": FORGET_AFTER_SECONDS},
    )


def stopped(session: Session, worker_id: str) -> None:
    """A clean shutdown: the row says so (it is not dead, it left)."""
    session.execute(
        text(
            "UPDATE workers SET stopped_at = now(), running = 0, last_seen_at = now() "
            "WHERE id = :id"
        ),
        {"id": worker_id},
    )


_LIST = text(
    """SELECT w.id, w.host, w.version, w.concurrency, w.running, w.started_at,
              w.last_seen_at, w.stopped_at,
              extract(epoch FROM now() - w.last_seen_at) AS silent_seconds,
              w.stopped_at IS NULL
                AND w.last_seen_at < now() - make_interval(secs => 3 * w.interval_seconds + 5)
                AS dead,
              (SELECT coalesce(array_agg(t.task || ' ' || t.id::text), '{}') FROM (
                   SELECT task, id FROM jobs j
                   WHERE j.status = 'running' AND j.worker_id = w.id
                   ORDER BY j.started_at LIMIT :per_worker) t) AS now_running
       FROM workers w
       ORDER BY w.stopped_at IS NOT NULL, w.last_seen_at DESC
       LIMIT :n"""
)


def list_workers(
    session: Session, *, limit: int = 200, per_worker: int = 5
) -> list[dict[str, Any]]:
    """Workers, live ones first, each with up to `per_worker` of the jobs it runs now."""
    rows = session.execute(_LIST, {"n": limit, "per_worker": per_worker}).mappings().all()
    return [dict(r) for r in rows]
