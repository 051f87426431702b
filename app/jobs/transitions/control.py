"""Transitions asked for by users and the dispatcher: due, cancel, retry, run now."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select, select, text, update
from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.jobs.queries import redrive_conditions
from app.jobs.states import (
    CANCELLABLE_NOW,
    RETRYABLE_BY_USER,
    RUNNABLE_NOW_BY_USER,
)
from app.jobs.transitions.guards import _NOW, Db, S, _allowed, _from

_DUE_FROM = _from([S.SCHEDULED], S.QUEUED)


def scheduled_to_queued(
    session: Db, job_ids: Sequence[uuid.UUID], *, published: bool = True
) -> None:
    """scheduled -> queued for jobs coming due (the dispatcher); `published=False` leaves the
    publish unconfirmed, for a send that follows the commit."""
    if job_ids:
        session.execute(
            text(
                f"""UPDATE jobs SET status = 'queued', updated_at = now(),
                        published_at = CASE WHEN :published THEN now() END
                    WHERE id = ANY(CAST(:ids AS uuid[])) AND status IN {_DUE_FROM}"""
            ),
            {"ids": [str(i) for i in job_ids], "published": published},
        )


def cancel(session: Session, job_id: uuid.UUID) -> Job | None:
    """Not started -> cancelled at once; running -> cancellation requested. None if neither."""
    done = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(_allowed([S.CANCELLED], list(CANCELLABLE_NOW))))
        .values(
            status=S.CANCELLED.value, finished_at=_NOW, updated_at=_NOW, cancel_requested_at=_NOW
        )
        .returning(Job)
    )
    if done is not None:
        return done
    # No status write: the worker's heartbeat sees the request and cancels the handler's
    # context; the attempt's end then writes running -> cancelled.
    return session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status == S.RUNNING.value)
        .values(cancel_requested_at=text("coalesce(cancel_requested_at, now())"), updated_at=_NOW)
        .returning(Job)
        .execution_options(synchronize_session=False)
    )


_CANCEL_NOW = _from(list(CANCELLABLE_NOW), S.CANCELLED)
_CANCEL_MANY = text(
    f"""WITH now_cancelled AS (
            UPDATE jobs SET status = 'cancelled', finished_at = now(), updated_at = now(),
                            cancel_requested_at = now()
            WHERE id = ANY(CAST(:ids AS uuid[])) AND status IN {_CANCEL_NOW}
            RETURNING id
        ), requested AS (
            -- Running: a request the worker's heartbeat passes on (no status write here).
            UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()),
                            updated_at = now()
            WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'running'
            RETURNING id
        )
        SELECT id FROM now_cancelled UNION ALL SELECT id FROM requested"""
)


def cancel_many(session: Session, job_ids: Sequence[uuid.UUID]) -> int:
    """cancel() for many jobs in one statement; how many were cancelled or asked to stop."""
    if not job_ids:
        return 0
    return len(session.execute(_CANCEL_MANY, {"ids": [str(i) for i in job_ids]}).all())


def _requeue_selection(
    ids: list[uuid.UUID] | None,
    task: str | None,
    failed_after: datetime | None,
    failed_before: datetime | None,
    dead_lettered_only: bool,
    limit: int,
) -> Select[Any]:
    wanted = list(RETRYABLE_BY_USER) if ids else [S.FAILED]
    stmt = select(Job.id).where(Job.status.in_(_allowed([S.QUEUED], wanted)))
    if ids:
        stmt = stmt.where(Job.id.in_(ids))
    stmt = stmt.where(*redrive_conditions(task, failed_after, failed_before, dead_lettered_only))
    return stmt.order_by(Job.finished_at).limit(limit).with_for_update(skip_locked=True)


def requeue(
    session: Session,
    *,
    ids: list[uuid.UUID] | None = None,
    task: str | None = None,
    failed_after: datetime | None = None,
    failed_before: datetime | None = None,
    dead_lettered_only: bool = False,
    limit: int = 1000,
) -> list[Row[Any]]:
    """failed|cancelled -> queued as a fresh attempt series (retry, redrive); history kept.

    Returns (id, status, trace_id, run_at, priority) per job, never whole rows: a redrive of
    thousands of jobs must not load their payloads and results."""
    chosen = _requeue_selection(ids, task, failed_after, failed_before, dead_lettered_only, limit)
    stmt = (
        update(Job)
        .where(Job.id.in_(chosen.scalar_subquery()))
        .values(
            status=S.QUEUED.value,
            attempts=0,
            failures=0,
            crashes=0,
            redeliveries=0,
            series=Job.series + 1,
            result=None,
            error=None,
            started_at=None,
            finished_at=None,
            published_at=None,
            lease_expires_at=None,
            worker_id=None,
            dead_lettered_at=None,
            cancel_requested_at=None,
            run_at=None,
            updated_at=_NOW,
        )
        .returning(Job.id, Job.status, Job.trace_id, Job.run_at, Job.priority, Job.queue)
        .execution_options(synchronize_session=False)
    )
    return list(session.execute(stmt).all())  # type: ignore[arg-type]


def run_now(session: Session, job_id: uuid.UUID) -> list[Row[Any]]:
    """queued|retrying -> queued, due now, its send unconfirmed (retry of a waiting job).

    The attempt series and its counts go on; only the wait ends. The caller publishes it
    (and the dispatcher re-sends it if that send is lost), so a job whose message vanished
    runs again; if the message was there after all, the second one is a harmless duplicate.
    Same columns as requeue()."""
    stmt = (
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(_allowed([S.QUEUED], list(RUNNABLE_NOW_BY_USER))),
        )
        .values(status=S.QUEUED.value, run_at=None, published_at=None, updated_at=_NOW)
        .returning(Job.id, Job.status, Job.trace_id, Job.run_at, Job.priority, Job.queue)
        .execution_options(synchronize_session=False)
    )
    return list(session.execute(stmt).all())  # type: ignore[arg-type]
