"""`jobq.enqueue`: write a job inside the caller's own database transaction.

    with engine.begin() as conn:                       # or a Session, or a psycopg2 connection
        conn.execute(orders.insert().values(id=order_id, ...))
        jobq.enqueue(conn, "send_receipt", {"order_id": order_id}, idempotency_key=order_id)

The job row is written by the caller's connection, so it exists only if that transaction
commits; nothing is sent to SQS from here. A `NOTIFY jobq_outbox` issued in the same
transaction (PostgreSQL delivers it only at commit) wakes the dispatcher, which publishes the
job within moments; its periodic re-publish of unpublished rows is the safety net when no
dispatcher was listening (docs/enqueue.md).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from app.catalogue import store
from app.catalogue.cache import Catalogue
from app.catalogue.definitions import Definition
from app.catalogue.wiring import check_local, local_definitions
from app.config import Settings, get_settings
from app.errors import InvalidInput as _InvalidInput
from app.jobs.rows import build_row
from app.jobs.schemas import JobCreate
from app.outbox.wakeup import CHANNEL
from jobq.errors import Conflict, InvalidInput

Fetch = Callable[[str, Mapping[str, Any]], list[dict[str, Any]]]

# Driver-level SQL with pyformat parameters: the same text runs on a psycopg2 cursor and
# through SQLAlchemy's exec_driver_sql. Values go as text and are cast by PostgreSQL, so no
# driver-specific adapters (JSON, UUID) are needed.
_COLUMNS = (
    "id", "task", "status", "payload", "max_attempts", "timeout_seconds", "trace_id",
    "priority", "run_at", "idempotency_key", "request_hash", "idempotency_expires_at",
)  # fmt: skip
_CASTS = {"id": "CAST(%(id)s AS uuid)", "payload": "CAST(%(payload)s AS jsonb)"}
_INSERT = (
    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ("
    + ", ".join(_CASTS.get(c, f"%({c})s") for c in _COLUMNS)
    + ") ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
    " RETURNING id::text AS id"
)
# An expired key no longer answers: free it for this request (as the API does).
_FREE_KEY = (
    "UPDATE jobs SET idempotency_key = NULL"
    " WHERE idempotency_key = %(key)s AND idempotency_expires_at < now()"
)
_EXISTING = "SELECT id::text AS id, status, request_hash FROM jobs WHERE idempotency_key = %(key)s"
_NOTIFY = "SELECT pg_notify(%(channel)s, %(id)s)"


@dataclass(frozen=True)
class Enqueued:
    """What enqueue() wrote: the job's id, its status, and False when an idempotency key
    matched a job that already exists (nothing new was written)."""

    id: uuid.UUID
    status: str
    created: bool


class _State:
    """The process's catalogue cache and settings, made on first use."""

    settings: Settings | None = None
    catalogue: Catalogue | None = None


def _setup() -> tuple[Settings, Catalogue]:
    settings = _State.settings = _State.settings or get_settings()
    if _State.catalogue is None:
        _State.catalogue = Catalogue(
            None,
            local_definitions,
            max_age=settings.catalogue_refresh_seconds,
            local_check=check_local,
        )
    return settings, _State.catalogue


def _fetcher(conn: Any) -> Fetch:
    """Run driver-level SQL on a SQLAlchemy Session or Connection, or a DB-API connection."""
    from sqlalchemy import Connection
    from sqlalchemy.orm import Session

    if isinstance(conn, Session | Connection):
        target = conn.connection() if isinstance(conn, Session) else conn

        def run_sqlalchemy(sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
            result = target.exec_driver_sql(sql, dict(params))
            return [dict(m) for m in result.mappings()] if result.returns_rows else []

        return run_sqlalchemy
    if not hasattr(conn, "cursor"):
        raise TypeError(
            "enqueue() needs a SQLAlchemy Connection or Session, or a psycopg2 connection"
        )
    if getattr(conn, "autocommit", False):
        raise TypeError(
            "enqueue() writes inside your transaction, but this connection is in autocommit"
        )

    def run_dbapi(sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        with conn.cursor() as cur:
            cur.execute(sql, dict(params))
            if cur.description is None:
                return []
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    return run_dbapi


def _request(task: str, payload: Mapping[str, Any] | None, options: dict[str, Any]) -> JobCreate:
    try:
        return JobCreate.model_validate({"task": task, "payload": payload or {}, **options})
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "request"
        raise InvalidInput(
            f"{path}: {first['msg']}", status=422, code="invalid_input", field=path
        ) from None


def _param(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return json.dumps(value)
    return value


def enqueue(
    conn: Any,
    task: str,
    payload: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    priority: str | None = None,
    run_at: datetime | None = None,
    delay_seconds: int | None = None,
    max_attempts: int | None = None,
    timeout_seconds: float | None = None,
    trace_id: str | None = None,
) -> Enqueued:
    """Write a job in `conn`'s open transaction: it exists, and runs, only once that commits.

    Validated like POST /jobs (task known to the catalogue, payload matching its schema, the
    same options and limits): raises jobq.InvalidInput naming the field, or jobq.Conflict when
    `idempotency_key` already names a different request. A key that names the same request
    returns that job (`created=False`).
    """
    options = {
        "idempotency_key": idempotency_key,
        "priority": priority,
        "run_at": run_at,
        "delay_seconds": delay_seconds,
        "max_attempts": max_attempts,
        "timeout_seconds": timeout_seconds,
    }
    req = _request(task, payload, {k: v for k, v in options.items() if v is not None})
    settings, catalogue = _setup()
    fetch = _fetcher(conn)

    def load() -> list[Definition]:
        return store.read(fetch, live_seconds=settings.catalogue_live_seconds)

    try:
        row = build_row(
            catalogue, settings, req, trace_id=trace_id, key=req.idempotency_key, load=load
        )
    except _InvalidInput as exc:
        raise InvalidInput(exc.message, status=422, code="invalid_input", field=exc.field) from None
    return _insert(fetch, row)


def _insert(fetch: Fetch, row: dict[str, Any]) -> Enqueued:
    params = {c: _param(row.get(c)) for c in _COLUMNS}
    key = row.get("idempotency_key")
    if key is not None:
        fetch(_FREE_KEY, {"key": key})
    inserted = fetch(_INSERT, params)
    if inserted:
        if row["status"] == "queued":
            fetch(_NOTIFY, {"channel": CHANNEL, "id": inserted[0]["id"]})
        return Enqueued(uuid.UUID(inserted[0]["id"]), row["status"], True)
    # The key's job exists (or its transaction is committing: the unique index made us wait).
    existing = fetch(_EXISTING, {"key": key})[0]
    if existing["request_hash"] != row["request_hash"]:
        raise Conflict(
            "idempotency key already used for a different request",
            status=409,
            code="conflict",
            field="idempotency_key",
        )
    return Enqueued(uuid.UUID(existing["id"]), existing["status"], False)
