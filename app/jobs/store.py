"""SQL for creating, reading, listing and publishing jobs (no status transitions here)."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, delete, insert, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app.errors import InvalidInput
from app.jobs.models import Job, JobAttempt
from app.jobs.states import FINAL, JobStatus
from app.queue import Outgoing
from app.sqs_limits import MAX_DELAY_SECONDS

JOBS = cast(Table, Job.__table__)

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


def get_job(session: Session, job_id: uuid.UUID) -> Job | None:
    """The job, or None."""
    return session.get(Job, job_id)


def list_attempts(session: Session, job_id: uuid.UUID) -> list[JobAttempt]:
    """Every recorded attempt of a job, oldest first."""
    stmt = select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.id)
    return list(session.scalars(stmt))


def encode_cursor(job: Job) -> str:
    """An opaque cursor pointing just after `job` in newest-first order."""
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Parse a cursor from encode_cursor, or raise InvalidInput naming `cursor`."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, job_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|")
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("naive timestamp")
        return when, uuid.UUID(job_id)
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise InvalidInput("cursor is not a valid cursor", field="cursor") from exc


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None,
    task: str | None,
    limit: int,
    cursor: str | None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    idempotency_key: str | None = None,
) -> tuple[list[Job], str | None]:
    """A newest-first page of jobs (keyset pagination on (created_at, id), no OFFSET)."""
    stmt = select(Job)
    if status is not None:
        stmt = stmt.where(Job.status == status.value)
    if task is not None:
        stmt = stmt.where(Job.task == task)
    if created_after is not None:
        stmt = stmt.where(Job.created_at > created_after)
    if created_before is not None:
        stmt = stmt.where(Job.created_at < created_before)
    if idempotency_key is not None:
        stmt = stmt.where(Job.idempotency_key == idempotency_key)
    if cursor:
        created, job_id = decode_cursor(cursor)
        stmt = stmt.where(tuple_(Job.created_at, Job.id) < tuple_(created, job_id))
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    if len(rows) > limit:
        return rows[:limit], encode_cursor(rows[limit - 1])
    return rows, None


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
    """Lock queued jobs whose publish is unconfirmed (SKIP LOCKED: dispatchers share work)."""
    stmt = (
        select(Job.id, Job.trace_id, Job.priority, _DELAY_LEFT)
        .where(
            Job.status == JobStatus.QUEUED.value,
            Job.published_at.is_(None),
            Job.updated_at < text("now() - make_interval(secs => :after)"),
        )
        .order_by(Job.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(stmt, {"after": older_than_seconds}).all()
    return [Outgoing(r[0], r[1], int(r[3]), r[2]) for r in rows]


# Seconds until run_at, rounded up so SQS never delivers early, within SQS's 15-minute limit.
_DELAY_LEFT = text(
    f"least({MAX_DELAY_SECONDS}, greatest(0, ceil(extract(epoch FROM run_at - now()))))"
    " AS delay_left"
)


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


def mark_scheduled_queued(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """scheduled -> queued for jobs whose message SQS accepted."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(list(job_ids)), Job.status == JobStatus.SCHEDULED.value)
            .values(
                status=JobStatus.QUEUED.value, published_at=text("now()"), updated_at=text("now()")
            )
        )


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
