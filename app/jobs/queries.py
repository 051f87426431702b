"""SQL for creating, reading, listing and publishing jobs (no status transitions here)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, delete, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.jobs.states import FINAL, JobStatus
from app.sqs.limits import MAX_DELAY_SECONDS
from app.sqs.queue import Outgoing

JOBS = cast(Table, Job.__table__)


@dataclass(frozen=True)
class JobView:
    """Just what a worker needs to decide about a message it could not claim."""

    status: JobStatus
    attempts: int
    max_attempts: int
    lease_seconds_left: float  # negative once the lease has expired
    run_at_seconds_left: float = 0.0
    failures: int = 0
    crashes: int = 0
    redeliveries: int = 0
    priority: str = "default"


_VIEW = text(
    """SELECT status, attempts, max_attempts, failures, crashes, redeliveries, priority,
              coalesce(extract(epoch FROM lease_expires_at - now()), 0) AS lease_left,
              greatest(0, extract(epoch FROM run_at - now())) AS run_left
       FROM jobs WHERE id = :id"""
)


def view(session: Session | Connection, job_id: uuid.UUID) -> JobView | None:
    """Status, counts and remaining lease of a job, or None if it does not exist."""
    row = session.execute(_VIEW, {"id": job_id}).one_or_none()
    if row is None:
        return None
    return JobView(
        JobStatus(row.status),
        row.attempts,
        row.max_attempts,
        float(row.lease_left or 0),
        float(row.run_left or 0),
        row.failures,
        row.crashes,
        row.redeliveries,
        row.priority,
    )


# Core, not ORM: no entities are built for rows the caller already holds; the database adds
# only these server defaults. Many rows become one multi-row INSERT, returned in input order.
_INSERT = insert(JOBS).returning(
    JOBS.c.id, JOBS.c.created_at, JOBS.c.updated_at, sort_by_parameter_order=True
)


def insert_jobs(
    conn: Connection | Session, rows: list[dict[str, Any]]
) -> list[Row[tuple[uuid.UUID, datetime, datetime]]]:
    """Insert jobs without idempotency keys in one statement (every row with the same keys);
    return (id, created_at, updated_at) per row, in order."""
    if not rows:
        return []
    return list(conn.execute(_INSERT, rows).all())


def insert_idempotent(session: Session, values: dict[str, Any]) -> tuple[Job, bool]:
    """Insert unless a live job holds the key; return (job, created).

    The unique index decides under concurrency: a second identical request waits for the
    first to commit, then finds its row.
    """
    key = values["idempotency_key"]
    # An expired key no longer answers: free it for this request.
    session.execute(
        update(Job)
        .where(Job.idempotency_key == key, Job.idempotency_expires_at < text("now()"))
        .values(idempotency_key=None)
    )
    stmt = (
        pg_insert(Job)
        .values(**values)
        .on_conflict_do_nothing(
            index_elements=[Job.idempotency_key],
            index_where=Job.idempotency_key.isnot(None),
        )
        .returning(Job)
    )
    job = session.scalar(stmt)
    if job is not None:
        return job, True
    existing = session.scalar(select(Job).where(Job.idempotency_key == key))
    assert existing is not None, "conflicting row vanished"
    return existing, False


# Rows are locked in id order, as the worker's claim locks them: a plain UPDATE locks in plan
# order (heap order under a bitmap scan), and a claim of the same jobs running meanwhile
# deadlocked with it (seen in the benchmark's submit-while-working phase).
_MARK_PUBLISHED = text(
    "UPDATE jobs SET published_at = now() WHERE id IN ("
    " SELECT id FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) AND published_at IS NULL"
    " ORDER BY id FOR UPDATE)"
)


def mark_published(conn: Connection | Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Record that SQS accepted a message for each job (one plain UPDATE, no ORM state)."""
    if job_ids:
        conn.execute(_MARK_PUBLISHED, {"ids": [str(i) for i in job_ids]})


def claim_unpublished(session: Session, *, older_than_seconds: float, limit: int) -> list[Outgoing]:
    """Lock jobs to run whose message is unconfirmed: queued ones whose publish failed, and
    retrying ones whose next run is within SQS's delay window (SKIP LOCKED: dispatchers share
    the work)."""
    stmt = (
        select(Job.id, Job.trace_id, Job.priority, _DELAY_LEFT)
        .where(
            Job.status.in_([JobStatus.QUEUED.value, JobStatus.RETRYING.value]),
            Job.published_at.is_(None),
            Job.updated_at < text("now() - make_interval(secs => :after)"),
            or_(
                Job.run_at.is_(None),
                Job.run_at <= text(f"now() + interval '{MAX_DELAY_SECONDS} seconds'"),
            ),
        )
        .order_by(Job.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(stmt, {"after": older_than_seconds}).all()
    return [Outgoing(r[0], r[1], int(r[3] or 0), r[2]) for r in rows]


# Seconds until run_at, rounded up so SQS never delivers early, within SQS's 15-minute limit.
_DELAY_LEFT = text(
    f"least({MAX_DELAY_SECONDS}, greatest(0, ceil(extract(epoch FROM run_at - now()))))"
    " AS delay_left"
)


def claim_enqueued(session: Session, job_ids: Sequence[str]) -> list[Outgoing]:
    """Lock these queued jobs if their message was not sent yet (SKIP LOCKED: a dispatcher
    sending them right now keeps them)."""
    stmt = (
        select(Job.id, Job.trace_id, Job.priority, _DELAY_LEFT)
        .where(
            Job.id.in_([uuid.UUID(i) for i in job_ids]),
            Job.status == JobStatus.QUEUED.value,
            Job.published_at.is_(None),
        )
        .order_by(Job.id)
        .with_for_update(skip_locked=True)
    )
    return [Outgoing(r[0], r[1], int(r[3] or 0), r[2]) for r in session.execute(stmt).all()]


def claim_due_scheduled(session: Session, *, limit: int) -> list[Outgoing]:
    """Lock scheduled jobs due within SQS's delay window; they are sent with the delay left."""
    stmt = (
        select(Job.id, Job.trace_id, Job.priority, _DELAY_LEFT)
        .where(
            Job.status == JobStatus.SCHEDULED.value,
            Job.run_at <= text(f"now() + interval '{MAX_DELAY_SECONDS} seconds'"),
        )
        .order_by(Job.run_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [Outgoing(r[0], r[1], int(r[3] or 0), r[2]) for r in session.execute(stmt).all()]


def prune_finished(session: Session, *, older_than_days: float, limit: int) -> int:
    """Delete up to `limit` finished jobs (and their attempts) older than the retention."""
    doomed = (
        select(Job.id)
        .where(
            Job.status.in_([s.value for s in FINAL]),
            Job.finished_at < text("now() - make_interval(secs => :secs)"),
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    result = session.execute(
        delete(Job).where(Job.id.in_(doomed)), {"secs": older_than_days * 86400}
    )
    return int(getattr(result, "rowcount", 0) or 0)


def failed_jobs(
    session: Session,
    *,
    task: str | None = None,
    failed_after: datetime | None = None,
    failed_before: datetime | None = None,
    dead_lettered_only: bool = False,
    limit: int = 100,
) -> list[Job]:
    """Failed jobs, most recently failed first, filtered like a redrive (jobq dlq list)."""
    stmt = select(Job).where(Job.status == JobStatus.FAILED.value)
    if task:
        stmt = stmt.where(Job.task == task)
    if failed_after:
        stmt = stmt.where(Job.finished_at >= failed_after)
    if failed_before:
        stmt = stmt.where(Job.finished_at < failed_before)
    if dead_lettered_only:
        stmt = stmt.where(Job.dead_lettered_at.isnot(None))
    return list(session.scalars(stmt.order_by(Job.finished_at.desc()).limit(limit)))
