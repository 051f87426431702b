"""SQL for creating, reading, listing and publishing jobs (no status transitions here)."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, insert, select, text, tuple_, update
from sqlalchemy.orm import Session

from app.errors import InvalidInput
from app.jobs.models import Job, JobAttempt
from app.jobs.states import JobStatus


def insert_job(session: Session, values: dict[str, Any]) -> Job:
    """Insert one job row and return it with its server-side defaults."""
    job = session.scalar(insert(Job).values(**values).returning(Job))
    assert job is not None
    return job


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
) -> tuple[list[Job], str | None]:
    """A newest-first page of jobs (keyset pagination on (created_at, id), no OFFSET)."""
    stmt = select(Job)
    if status is not None:
        stmt = stmt.where(Job.status == status.value)
    if task is not None:
        stmt = stmt.where(Job.task == task)
    if cursor:
        created, job_id = decode_cursor(cursor)
        stmt = stmt.where(tuple_(Job.created_at, Job.id) < tuple_(created, job_id))
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    if len(rows) > limit:
        return rows[:limit], encode_cursor(rows[limit - 1])
    return rows, None


def mark_published(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Record that SQS accepted a message for each job."""
    if job_ids:
        session.execute(
            update(Job)
            .where(and_(Job.id.in_(list(job_ids)), Job.published_at.is_(None)))
            .values(published_at=text("now()"))
        )


def claim_unpublished(
    session: Session, *, older_than_seconds: float, limit: int
) -> list[tuple[uuid.UUID, str | None]]:
    """Lock queued jobs whose publish is unconfirmed (SKIP LOCKED: dispatchers share work)."""
    stmt = (
        select(Job.id, Job.trace_id)
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
    return [(r[0], r[1]) for r in rows]
