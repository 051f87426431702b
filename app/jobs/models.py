"""Typed SQLAlchemy models for jobs and their attempt history."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.jobs.states import JobStatus

# Rows that hold their unique_key (the partial unique index's predicate).
UNIQUE_HELD = (
    "unique_key IS NOT NULL AND (unique_until IS NOT NULL"
    " OR status NOT IN ('succeeded', 'failed', 'cancelled'))"
)
_STATUS_CHECK = "status IN (" + ", ".join(f"'{s.value}'" for s in JobStatus) + ")"


def _ts(nullable: bool = True, default: bool = False) -> Any:
    return mapped_column(
        DateTime(timezone=True), nullable=nullable, server_default=func.now() if default else None
    )


class Job(Base):
    """One unit of work: what to run, its state, and its outcome."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_STATUS_CHECK, name="ck_jobs_status"),
        CheckConstraint("attempts >= 0", name="ck_jobs_attempts"),
        CheckConstraint("max_attempts >= 1", name="ck_jobs_max_attempts"),
        CheckConstraint("priority IN ('high', 'default', 'low')", name="ck_jobs_priority"),
        # Newest-first listing, optionally filtered; (created_at, id) is the cursor key.
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_status_created", "status", "created_at", "id"),
        Index("ix_jobs_task_created", "task", "created_at", "id"),
        # Idempotency: one live job per key, enforced by the database, not read-then-write.
        Index(
            "ux_jobs_idempotency_key",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # The dispatcher's scans: scheduled jobs coming due, and retention of finished jobs.
        Index("ix_jobs_scheduled", "run_at", postgresql_where=text("status = 'scheduled'")),
        Index(
            "ix_jobs_finished",
            "finished_at",
            postgresql_where=text("status IN ('succeeded', 'failed', 'cancelled')"),
        ),
        # Unique jobs: one holder per key while unfinished, or until unique_until.
        Index(
            "ux_jobs_unique_key",
            "unique_key",
            unique=True,
            postgresql_where=text(UNIQUE_HELD),
        ),
        # Cron schedules: at most one job per (schedule, tick), whoever inserts it.
        Index(
            "ux_jobs_schedule_tick",
            "schedule_id",
            "schedule_tick",
            unique=True,
            postgresql_where=text("schedule_id IS NOT NULL"),
        ),
        Index(
            "ix_jobs_workflow",
            "workflow_id",
            "created_at",
            postgresql_where=text("workflow_id IS NOT NULL"),
        ),
        # The dispatcher's scan: queued jobs whose publish is not confirmed.
        Index(
            "ix_jobs_unpublished",
            "updated_at",
            postgresql_where=text("status IN ('queued', 'retrying') AND published_at IS NULL"),
        ),
        # A claim under a concurrency limit counts the task's running jobs.
        Index("ix_jobs_running_task", "task", postgresql_where=text("status = 'running'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    task: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), server_default=JobStatus.QUEUED.value)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    result: Mapped[Any | None] = mapped_column(JSONB, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Handler runs started: the attempt number, and the fence of every write about the run.
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer)
    # Runs that failed (what max_attempts limits); runs lost with their worker (crashes);
    # times the DLQ consumer sent the job back because it never ran (redeliveries).
    failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    crashes: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    redeliveries: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Attempt series: 1, and one more on each POST /jobs/{id}/retry or redrive.
    series: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    timeout_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    trace_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = _ts(nullable=False, default=True)
    updated_at: Mapped[datetime] = _ts(nullable=False, default=True)
    started_at: Mapped[datetime | None] = _ts()
    finished_at: Mapped[datetime | None] = _ts()
    # Set once SQS confirmed a SendMessage for the current attempt series.
    published_at: Mapped[datetime | None] = _ts()
    # While running: the worker holding the job must heartbeat before this instant.
    lease_expires_at: Mapped[datetime | None] = _ts()
    dead_lettered_at: Mapped[datetime | None] = _ts()
    priority: Mapped[str] = mapped_column(String(8), server_default="default")
    # Not before this instant (delayed and scheduled jobs).
    run_at: Mapped[datetime | None] = _ts()
    cancel_requested_at: Mapped[datetime | None] = _ts()
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # sha256 of the canonical request, to tell a replay from a conflicting reuse of a key.
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    idempotency_expires_at: Mapped[datetime | None] = _ts()
    # Unique jobs (docs/flow-control.md): held while unfinished, or until unique_until.
    unique_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    unique_until: Mapped[datetime | None] = _ts()
    # The schedule and tick that made this job (cron schedules).
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    schedule_tick: Mapped[datetime | None] = _ts()
    # Workflows: the group of jobs linked by depends_on; a waiting job's unfinished parents;
    # what a failed or cancelled parent does to it (cancel|run); its parents' outcomes, copied
    # in when it is queued (what the handler sees as ctx.parent_results).
    workflow_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    pending_parents: Mapped[int | None] = mapped_column(Integer, nullable=True)
    on_parent_failure: Mapped[str | None] = mapped_column(String(8), nullable=True)
    parent_results: Mapped[Any | None] = mapped_column(JSONB, nullable=True)
    # The named queue (SQS queue) the job is routed to (docs/flow-control.md).
    queue: Mapped[str] = mapped_column(String(64), server_default="default")
    # ctx.progress(fraction, message), written throttled by the worker.
    progress: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    progress_at: Mapped[datetime | None] = _ts()
    # POSTed the job's JSON (signed) when it reaches a final status.
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)


class JobAttempt(Base):
    """The outcome of one execution attempt of a job (its error history)."""

    __tablename__ = "job_attempts"
    __table_args__ = (
        Index("ix_job_attempts_job", "job_id", "id"),
        Index("ix_job_attempts_finished", "finished_at"),  # the dashboard's charts
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)
    series: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    started_at: Mapped[datetime | None] = _ts()
    finished_at: Mapped[datetime] = _ts(nullable=False, default=True)


class JobDependency(Base):
    """An edge of a workflow: `child_id` waits for `parent_id` (position: its depends_on order)."""

    __tablename__ = "job_dependencies"
    __table_args__ = (
        PrimaryKeyConstraint("child_id", "parent_id"),
        Index("ix_job_dependencies_parent", "parent_id"),
    )

    child_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE")
    )
    parent_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    position: Mapped[int] = mapped_column(Integer)
    # Set once the parent's final status was applied to the child: exactly once per edge,
    # even when the parent is retried and finishes again.
    settled: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class FlowControl(Base):
    """Pause and limits of one task or queue, shared by every worker (docs/flow-control.md)."""

    __tablename__ = "flow_controls"
    __table_args__ = (CheckConstraint("scope IN ('task', 'queue')", name="ck_flow_controls_scope"),)

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Set at run time; NULL falls back to the code's declaration.
    max_concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rate_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rate_period: Mapped[float | None] = mapped_column(Float, nullable=True)
    declared_max_concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    declared_rate_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    declared_rate_period: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens: Mapped[float | None] = mapped_column(Float, nullable=True)
    refilled_at: Mapped[datetime | None] = _ts()
    updated_at: Mapped[datetime] = _ts(nullable=False, default=True)
