"""Guarded user operations on jobs: cancel, retry and redrive (one UPDATE ... RETURNING each)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select, text, update
from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.jobs.states import CANCELLABLE_NOW, RETRYABLE_BY_USER, JobStatus

_NOW = text("now()")


def cancel(session: Session, job_id: uuid.UUID) -> Job | None:
    """Not started -> cancelled at once; running -> cancellation requested. None if neither."""
    done = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([s.value for s in CANCELLABLE_NOW]))
        .values(
            status=JobStatus.CANCELLED.value,
            finished_at=_NOW,
            updated_at=_NOW,
            cancel_requested_at=_NOW,
        )
        .returning(Job)
    )
    if done is not None:
        return done
    # The worker's heartbeat notices the request and cancels the handler's context.
    return session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
        .values(cancel_requested_at=text("coalesce(cancel_requested_at, now())"), updated_at=_NOW)
        .returning(Job)
        .execution_options(synchronize_session=False)
    )


def _selection(
    ids: list[uuid.UUID] | None,
    task: str | None,
    failed_after: datetime | None,
    failed_before: datetime | None,
    dead_lettered_only: bool,
    limit: int,
) -> Select[Any]:
    statuses = [s.value for s in RETRYABLE_BY_USER] if ids else [JobStatus.FAILED.value]
    stmt = select(Job.id).where(Job.status.in_(statuses))
    if ids:
        stmt = stmt.where(Job.id.in_(ids))
    if task:
        stmt = stmt.where(Job.task == task)
    if failed_after:
        stmt = stmt.where(Job.finished_at >= failed_after)
    if failed_before:
        stmt = stmt.where(Job.finished_at < failed_before)
    if dead_lettered_only:
        stmt = stmt.where(Job.dead_lettered_at.isnot(None))
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
) -> list[Job]:
    """failed|cancelled -> queued as a fresh attempt series; the attempt history is kept."""
    chosen = _selection(ids, task, failed_after, failed_before, dead_lettered_only, limit)
    stmt = (
        update(Job)
        .where(Job.id.in_(chosen.scalar_subquery()))
        .values(
            status=JobStatus.QUEUED.value,
            attempts=0,
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
        .returning(Job)
        .execution_options(synchronize_session=False)
    )
    return list(session.scalars(stmt))
