"""Request and response bodies of the jobs API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.states import JobStatus
from app.jobs.validation import SafeStr, UtcDatetime

MAX_LIST_LIMIT = 500
# The furthest ahead a job may be submitted (delay_seconds); SQS's own limit is 15 minutes.
MAX_SUBMIT_DELAY_SECONDS = 366 * 24 * 3600
Priority = Literal["high", "default", "low"]
# The most parents one job may wait for (depends_on), and the longest unique window.
MAX_PARENTS = 500
MAX_UNIQUE_SECONDS = 366 * 24 * 3600
OnParentFailure = Literal["cancel", "run"]


class ErrorDetail(BaseModel):
    """What went wrong, and which field (dotted path) if one is to blame."""

    code: str
    message: str
    field: str | None = None
    # The job the error is about, where there is one (409 on a reused idempotency key, or on
    # cancel/retry refused by the job's status).
    job_id: str | None = None


class FieldProblem(BaseModel):
    """One problem a 422 found in the request (all of them, not only the first)."""

    field: str
    message: str
    type: str | None = None


class JobCreate(BaseModel):
    """Body of POST /jobs (and one item of POST /jobs/batch)."""

    model_config = ConfigDict(extra="forbid")

    task: SafeStr = Field(min_length=1, max_length=200, examples=["echo"])
    payload: dict[str, Any] = Field(default_factory=dict, examples=[{"hello": "world"}])
    idempotency_key: SafeStr | None = Field(None, min_length=1, max_length=255)
    delay_seconds: int | None = Field(None, ge=0, le=MAX_SUBMIT_DELAY_SECONDS)
    run_at: UtcDatetime | None = None
    # None: the task's priority (@task(priority=...)), else "default".
    priority: Priority | None = None
    max_attempts: int | None = Field(None, ge=1, le=1000)
    timeout_seconds: float | None = Field(None, gt=0, le=12 * 3600)
    # Unique jobs: while a job holding this key is unfinished (or, with unique_for_seconds,
    # for that long after it was submitted), a submit with the same key returns it (200).
    unique_key: SafeStr | None = Field(None, min_length=1, max_length=255)
    unique_for_seconds: int | None = Field(None, ge=1, le=MAX_UNIQUE_SECONDS)
    # Workflows: wait (status waiting) until every parent job succeeded.
    depends_on: list[uuid.UUID] | None = Field(None, min_length=1, max_length=MAX_PARENTS)
    on_parent_failure: OnParentFailure = "cancel"
    workflow_id: uuid.UUID | None = None
    # The named queue (default: the task's declared queue, else "default").
    queue: SafeStr | None = Field(None, min_length=1, max_length=64, examples=["media"])
    # POSTed the job's JSON, signed, once the job reaches a final status.
    callback_url: SafeStr | None = Field(None, min_length=8, max_length=2048)


class JobBatchCreate(BaseModel):
    """Body of POST /jobs/batch."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[JobCreate] = Field(min_length=1)
    atomic: bool = False


class RedriveRequest(BaseModel):
    """Body of POST /dlq/redrive: which failed jobs to run again."""

    model_config = ConfigDict(extra="forbid")

    task: SafeStr | None = Field(None, min_length=1, max_length=200)
    failed_after: UtcDatetime | None = None
    failed_before: UtcDatetime | None = None
    dead_lettered_only: bool = False
    limit: int = Field(1000, ge=1, le=10_000)


class RedriveResult(BaseModel):
    """How many failed jobs were re-enqueued."""

    redriven: int
    job_ids: list[uuid.UUID]


class JobOut(BaseModel):
    """A job as the API shows it; timestamps are ISO 8601 UTC."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    task: str
    status: JobStatus
    payload: dict[str, Any]
    result: Any | None
    error: str | None
    attempts: int
    max_attempts: int
    failures: int = 0
    crashes: int = 0
    series: int = 1
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    priority: Priority = "default"
    run_at: datetime | None = None
    timeout_seconds: float | None = None
    idempotency_key: str | None = None
    cancel_requested_at: datetime | None = None
    dead_lettered_at: datetime | None = None
    unique_key: str | None = None
    unique_until: datetime | None = None
    workflow_id: uuid.UUID | None = None
    schedule_id: uuid.UUID | None = None
    queue: str = "default"
    # ctx.progress(fraction, message) of the current run (kept once it ends).
    progress: float | None = None
    progress_message: str | None = None
    progress_at: datetime | None = None
    callback_url: str | None = None
    # Fields too large to show here: payload/result replaced by {"truncated": true, "bytes": N},
    # error cut short (GET /jobs/{id} shows a job whole; docs/operations-limits.md).
    truncated_fields: list[Literal["payload", "result", "error"]] = []


class BatchItemResult(BaseModel):
    """Outcome of one item of a batch: `created`, `existing` (idempotent replay) or `error`."""

    index: int
    status: Literal["created", "existing", "error"]
    job: JobOut | None = None
    error: ErrorDetail | None = None


class BatchResult(BaseModel):
    """Per-item results of POST /jobs/batch, in request order."""

    created: int
    existing: int
    errors: int
    items: list[BatchItemResult]


class JobList(BaseModel):
    """A page of jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""

    items: list[JobOut]
    next_cursor: str | None


class AttemptOut(BaseModel):
    """One recorded attempt of a job."""

    model_config = ConfigDict(from_attributes=True)

    attempt: int
    series: int = 1
    outcome: str
    error: str | None
    traceback: str | None = None
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime


class ErrorBody(BaseModel):
    """Every 4xx/5xx response body."""

    error: ErrorDetail
    # Only on 422s from request validation: every problem found, `error` being the first.
    details: list[FieldProblem] | None = None
