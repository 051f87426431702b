"""SQL of the task catalogue: workers upsert their definitions, readers load them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from sqlalchemy import Table, delete, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app.catalogue.definitions import Definition
from app.catalogue.models import CatalogueRow

TABLE = cast(Table, CatalogueRow.__table__)
# Definitions no worker has published for this long are deleted by the next publishing worker.
FORGET_SECONDS = 7 * 24 * 3600

# Driver-level SQL (pyformat parameters): run through a SQLAlchemy connection's
# exec_driver_sql or straight on a psycopg2 cursor (jobq.enqueue reads the catalogue through
# the caller's own connection).
READ_SQL = (
    "SELECT name, payload_schema, timeout_seconds, max_attempts, backoff, priority,"
    " queue, description, worker_version, first_seen_at, seen_at,"
    " seen_at > now() - make_interval(secs => %(live)s) AS live"
    " FROM task_catalogue ORDER BY name, first_seen_at DESC"
)

Fetch = Callable[[str, Mapping[str, Any]], Iterable[Mapping[str, Any]]]


def publish(session: Session, definitions: Iterable[Definition]) -> int:
    """Upsert definitions (a known one only gets seen_at and worker_version refreshed)."""
    rows = [
        {
            "name": d.name,
            "digest": d.digest,
            "payload_schema": d.payload_schema,
            "timeout_seconds": d.timeout_seconds,
            "max_attempts": d.max_attempts,
            "backoff": d.backoff,
            "priority": d.priority,
            "queue": d.queue,
            "description": d.description,
            "worker_version": d.worker_version,
        }
        for d in definitions
    ]
    if not rows:
        return 0
    # Sorted: concurrent publishers lock the same rows in the same order (no deadlock).
    rows.sort(key=lambda r: (r["name"], r["digest"]))
    stmt = pg_insert(TABLE).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=[TABLE.c.name, TABLE.c.digest],
        set_={"seen_at": text("now()"), "worker_version": stmt.excluded.worker_version},
    )
    session.execute(stmt)
    session.execute(
        delete(TABLE).where(TABLE.c.seen_at < text(f"now() - interval '{FORGET_SECONDS} seconds'"))
    )
    return len(rows)


def read(fetch: Fetch, *, live_seconds: float) -> list[Definition]:
    """Every stored definition, newest first per task, with `live` (a worker published it
    within `live_seconds`)."""
    return [
        Definition(
            name=r["name"],
            payload_schema=r["payload_schema"],
            timeout_seconds=r["timeout_seconds"],
            max_attempts=r["max_attempts"],
            backoff=r["backoff"],
            priority=r["priority"],
            queue=r["queue"],
            description=r["description"],
            worker_version=r["worker_version"],
            first_seen_at=r["first_seen_at"],
            seen_at=r["seen_at"],
            live=bool(r["live"]),
        )
        for r in fetch(READ_SQL, {"live": live_seconds})
    ]


def session_fetch(session: Session) -> Fetch:
    """A Fetch running on a SQLAlchemy session's connection."""

    def fetch(sql: str, params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        result = session.connection().exec_driver_sql(sql, dict(params))
        return [dict(m) for m in result.mappings()]

    return fetch
