"""SQL for creating, reading, listing and publishing jobs (no status transitions here)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Table,
    delete,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app.errors import Conflict
from app.jobs.models import UNIQUE_HELD, Job
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
    queue: str = "default"


_VIEW = text(
    """SELECT status, attempts, max_attempts, failures, crashes, redeliveries, priority, queue,
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
        row.queue,
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


def insert_guarded(session: Session, values: dict[str, Any]) -> tuple[Job, str | None]:
    """Insert unless a live job holds its idempotency key or unique key: (job, None) when
    created, else (the holder, "idempotency_key" | "unique_key").

    The unique indexes decide under concurrency: a second request with the same key waits
    for the first to commit, then finds its row (ON CONFLICT without a target covers both).
    """
    key, unique = values.get("idempotency_key"), values.get("unique_key")
    # An expired key no longer answers: free it for this request.
    if key is not None:
        session.execute(
            update(Job)
            .where(Job.idempotency_key == key, Job.idempotency_expires_at < text("now()"))
            .values(idempotency_key=None)
        )
    if unique is not None:
        session.execute(
            update(Job)
            .where(Job.unique_key == unique, Job.unique_until < text("now()"))
            .values(unique_key=None)
        )
    stmt = pg_insert(Job).values(**values).on_conflict_do_nothing().returning(Job)
    # A holder can finish between the conflict and the read (unique_key): then try again.
    for _ in range(5):
        job = session.scalar(stmt)
        if job is not None:
            return job, None
        if key is not None:
            existing = session.scalar(select(Job).where(Job.idempotency_key == key))
            if existing is not None:
                return existing, "idempotency_key"
        if unique is not None:
            existing = session.scalar(
                select(Job).where(Job.unique_key == unique, text(UNIQUE_HELD))
            )
            if existing is not None:
                return existing, "unique_key"
    raise Conflict("could not insert the job: its keys keep changing hands; try again")


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


_MARK_PROMOTED = text(
    "UPDATE jobs SET published_at = now() WHERE id IN ("
    " SELECT id FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) AND published_at IS NULL"
    " AND status = 'queued' ORDER BY id FOR UPDATE)"
)


def mark_promoted(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """mark_published for jobs the dispatcher promoted and sent after the commit: only those
    still queued (one that ran and failed meanwhile may await a later send as retrying)."""
    if job_ids:
        session.execute(_MARK_PROMOTED, {"ids": [str(i) for i in job_ids]})


def claim_unpublished(session: Session, *, older_than_seconds: float, limit: int) -> list[Outgoing]:
    """Lock jobs to run whose message is unconfirmed: queued ones whose publish failed, and
    retrying ones whose next run is within SQS's delay window (SKIP LOCKED: dispatchers share
    the work)."""
    stmt = (
        select(Job.id, Job.trace_id, Job.priority, _DELAY_LEFT, Job.queue)
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
    return [Outgoing(r[0], r[1], int(r[3] or 0), r[2], r[4]) for r in rows]


# Seconds until run_at, rounded up so SQS never delivers early, within SQS's 15-minute limit.
_DELAY_LEFT = text(
    f"least({MAX_DELAY_SECONDS}, greatest(0, ceil(extract(epoch FROM run_at - now()))))"
    " AS delay_left"
)


def claim_enqueued(session: Session, job_ids: Sequence[str]) -> list[Outgoing]:
    """Lock these queued jobs if their message was not sent yet (SKIP LOCKED: a dispatcher
    sending them right now keeps them)."""
    stmt = (
        select(Job.id, Job.trace_id, Job.priority, _DELAY_LEFT, Job.queue)
        .where(
            Job.id.in_([uuid.UUID(i) for i in job_ids]),
            Job.status == JobStatus.QUEUED.value,
            Job.published_at.is_(None),
        )
        .order_by(Job.id)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(stmt).all()
    return [Outgoing(r[0], r[1], int(r[3] or 0), r[2], r[4]) for r in rows]


def claim_due_scheduled(session: Session, *, limit: int) -> list[Outgoing]:
    """Lock scheduled jobs due within SQS's delay window; they are sent with the delay left."""
    stmt = (
        select(Job.id, Job.trace_id, Job.priority, _DELAY_LEFT, Job.queue)
        .where(
            Job.status == JobStatus.SCHEDULED.value,
            Job.run_at <= text(f"now() + interval '{MAX_DELAY_SECONDS} seconds'"),
        )
        .order_by(Job.run_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(stmt).all()
    return [Outgoing(r[0], r[1], int(r[3] or 0), r[2], r[4]) for r in rows]


def make_due(session: Session, job_id: uuid.UUID) -> bool:
    """A scheduled job's run_at becomes now (no status write: the dispatcher promotes it)."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.SCHEDULED.value)
        .values(run_at=text("now()"), updated_at=text("now()"))
        .returning(Job.id)
    )
    return session.execute(stmt).first() is not None


# Jobs of some (named queue, priority) routes that should have a message in their SQS queue:
# every running one (its message is in flight) and every queued or retrying one whose send SQS
# confirmed more than :settle seconds ago (younger sends may not show in SQS's approximate
# counts yet) or before the queue was created (it cannot be in there).
_EXPECTED = text(
    """SELECT count(*) FROM jobs
       WHERE (queue, priority) IN (SELECT * FROM unnest(CAST(:queues AS text[]),
                                                        CAST(:priorities AS text[])))
         AND (status = 'running'
              OR (status IN ('queued', 'retrying')
                  AND (published_at < now() - make_interval(secs => :settle)
                       OR published_at < to_timestamp(:created))))"""
)


def _routes(routes: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    return {"queues": [q for q, _ in routes], "priorities": [p for _, p in routes]}


def expected_messages(
    session: Session,
    routes: Sequence[tuple[str, str]],
    *,
    settle_seconds: float,
    queue_created: float,
) -> int:
    """How many jobs of these (queue, priority) routes should have a message in SQS (the
    reconciler's gate)."""
    params = {**_routes(routes), "settle": settle_seconds, "created": queue_created}
    return int(session.scalar(_EXPECTED, params) or 0)


# A job's message has gone missing when it should have been received and claimed long ago: its
# send (published_at), its due time (run_at) or its dead holder's lease (plus the margin a new
# claim waits) lies more than :after seconds back; or it was sent before its queue was created
# (the queue was deleted and made again, e.g. an emulator restarted). Never while a lease is
# live. Oldest first: retention expiry loses the oldest messages.
_DRIFTED = text(
    f"""SELECT id, trace_id, priority, queue, status, {_DELAY_LEFT.text}
        FROM jobs
        WHERE status IN ('queued', 'retrying', 'running')
          AND (queue, priority) IN (SELECT * FROM unnest(CAST(:queues AS text[]),
                                                         CAST(:priorities AS text[])))
          AND published_at IS NOT NULL
          AND (lease_expires_at IS NULL
               OR lease_expires_at + make_interval(secs => :lease_margin) < now())
          AND (greatest(published_at, run_at,
                        lease_expires_at + make_interval(secs => :lease_margin))
                 < now() - make_interval(secs => :after)
               OR published_at < to_timestamp(:created))
        ORDER BY greatest(published_at, run_at) LIMIT :limit
        FOR UPDATE SKIP LOCKED"""
)


@dataclass(frozen=True)
class Drifted:
    """A job whose message is missing from SQS, to be sent again."""

    outgoing: Outgoing
    status: JobStatus


def claim_drifted(
    session: Session,
    routes: Sequence[tuple[str, str]],
    *,
    after_seconds: float,
    lease_margin: float,
    queue_created: float,
    limit: int,
) -> list[Drifted]:
    """Lock up to `limit` jobs of these (queue, priority) routes whose message should long have
    been claimed (see _DRIFTED); SKIP LOCKED: a claim in progress is left to finish."""
    params = {
        **_routes(routes),
        "after": after_seconds,
        "lease_margin": lease_margin,
        "created": queue_created,
        "limit": limit,
    }
    return [
        Drifted(
            Outgoing(r.id, r.trace_id, int(r.delay_left or 0), r.priority, r.queue),
            JobStatus(r.status),
        )
        for r in session.execute(_DRIFTED, params)
    ]


_STAMP_SENT = text(
    "UPDATE jobs SET published_at = now() WHERE id IN ("
    " SELECT id FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))"
    " AND status IN ('queued', 'retrying', 'running') ORDER BY id FOR UPDATE)"
)


def stamp_sent(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Record a re-send: the job's next chance to drift starts now (no status write)."""
    if job_ids:
        session.execute(_STAMP_SENT, {"ids": [str(i) for i in job_ids]})


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
    stmt = select(Job).where(
        Job.status == JobStatus.FAILED.value,
        *redrive_conditions(task, failed_after, failed_before, dead_lettered_only),
    )
    return list(session.scalars(stmt.order_by(Job.finished_at.desc()).limit(limit)))


def redrive_conditions(
    task: str | None,
    failed_after: datetime | None,
    failed_before: datetime | None,
    dead_lettered_only: bool,
) -> list[ColumnElement[bool]]:
    """The filters of a redrive (jobq dlq list/redrive, bulk retry) as SQL conditions."""
    conditions: list[ColumnElement[bool]] = []
    if task:
        conditions.append(Job.task == task)
    if failed_after:
        conditions.append(Job.finished_at >= failed_after)
    if failed_before:
        conditions.append(Job.finished_at < failed_before)
    if dead_lettered_only:
        conditions.append(Job.dead_lettered_at.isnot(None))
    return conditions


def insert_tick(session: Session, row: dict[str, Any]) -> Any:
    """Insert a schedule's job for one tick unless that tick has one already (the unique
    index on (schedule_id, schedule_tick) decides between tickers); (id, trace_id, priority, queue)
    of the new job, or None."""
    stmt = (
        pg_insert(Job)
        .values(**row)
        .on_conflict_do_nothing(
            index_elements=[Job.schedule_id, Job.schedule_tick],
            index_where=Job.schedule_id.isnot(None),
        )
        .returning(Job.id, Job.trace_id, Job.priority, Job.queue)
    )
    return session.execute(stmt).first()


_PROGRESS = text(
    """
    UPDATE jobs AS j SET progress = v.fraction, progress_message = v.message,
                         progress_at = now()
    FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[]), CAST(:fractions AS float8[]),
                CAST(:messages AS text[])) AS v(id, attempt, fraction, message)
    WHERE j.id = v.id
      AND j.id IN (SELECT id FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id
                   FOR UPDATE)
      AND j.status = 'running' AND j.worker_id = :worker AND j.attempts = v.attempt
    """
)


def write_progress(
    conn: Connection | Session,
    worker_id: str,
    reports: Sequence[tuple[uuid.UUID, int, float, str | None]],
) -> None:
    """Record (job id, attempt, fraction, message) reports of runs this worker still holds."""
    if reports:
        conn.execute(
            _PROGRESS,
            {
                "ids": [str(r[0]) for r in reports],
                "attempts": [r[1] for r in reports],
                "fractions": [r[2] for r in reports],
                "messages": [r[3] for r in reports],
                "worker": worker_id,
            },
        )
