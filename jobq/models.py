"""What the client sends and returns: pydantic models mirroring the API's JSON.

`Job` and `Attempt` have the fields of the API's JobOut and AttemptOut (tests/test_sdk.py
checks that they stay the same); unknown fields a newer server adds are ignored. They are
frozen: a `Job` is a snapshot, `client.get(job.id)` fetches a fresh one.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict

from app.jobs.states import FINAL, JobStatus

Priority = Literal["high", "default", "low"]

__all__ = [
    "Attempt",
    "BatchItem",
    "BatchResult",
    "ItemError",
    "Job",
    "JobPage",
    "JobRequest",
    "JobStatus",
    "ListFilters",
    "Priority",
    "SubmitOptions",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Job(_Model):
    """A job as the API last showed it; timestamps are timezone-aware UTC."""

    id: uuid.UUID
    task: str
    status: JobStatus
    payload: dict[str, Any]
    result: Any | None
    error: str | None
    attempts: int  # runs of the handler started (the attempt number)
    max_attempts: int
    failures: int = 0  # runs that failed (what max_attempts limits)
    crashes: int = 0  # runs lost with their worker
    series: int = 1  # attempt series: one more after each retry()
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
    queue: str = "default"  # the named queue it was routed to
    progress: float | None = None  # ctx.progress() of its current (or last) run, 0..1
    progress_message: str | None = None
    progress_at: datetime | None = None
    callback_url: str | None = None

    @property
    def final(self) -> bool:
        """True once succeeded, failed or cancelled (a retry() can still re-open it)."""
        return self.status in FINAL


class Attempt(_Model):
    """One finished attempt of a job."""

    attempt: int
    series: int = 1
    outcome: str
    error: str | None
    traceback: str | None = None
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime


class SubmitOptions(TypedDict, total=False):
    """Keyword options of submit(): each is the POST /jobs field of the same name.

    Without `idempotency_key` the client makes one up, so that retrying a submit whose
    response was lost can never create a second job.
    """

    idempotency_key: str
    priority: Priority
    run_at: datetime
    delay_seconds: int
    max_attempts: int
    timeout_seconds: float
    queue: str
    callback_url: str


class JobRequest(_Model):
    """One job to submit (an item of submit_many(); submit() builds one from its arguments)."""

    task: str
    payload: dict[str, Any] = {}
    idempotency_key: str | None = None
    priority: Priority | None = None
    run_at: datetime | None = None
    delay_seconds: int | None = None
    max_attempts: int | None = None
    timeout_seconds: float | None = None
    queue: str | None = None
    callback_url: str | None = None

    def body(self, *, key: str | None = None) -> dict[str, Any]:
        """The JSON body; `key` is used when no idempotency_key was given."""
        data = self.model_dump(mode="json", exclude_none=True)
        if key is not None:
            data.setdefault("idempotency_key", key)
        return data


class ListFilters(TypedDict, total=False):
    """Filters of list(): the GET /jobs query parameters of the same name."""

    status: JobStatus | str
    task: str
    created_after: datetime
    created_before: datetime
    idempotency_key: str


class ItemError(_Model):
    """Why one item of a batch was not accepted; `field` is a dotted path like jobs.2.task."""

    code: str
    message: str
    field: str | None = None


class BatchItem(_Model):
    """The outcome of one submit_many() item: created, existing (idempotent replay) or error."""

    index: int
    status: Literal["created", "existing", "error"]
    job: Job | None = None
    error: ItemError | None = None


class BatchResult(_Model):
    """Per-item results of submit_many(), in request order."""

    created: int
    existing: int
    errors: int
    items: list[BatchItem]

    @property
    def jobs(self) -> list[Job]:
        """The jobs of the accepted items (created or existing), in request order."""
        return [i.job for i in self.items if i.job is not None]


class JobPage(_Model):
    """One page of GET /jobs (list() follows next_cursor for you)."""

    items: list[Job]
    next_cursor: str | None


class Control(_Model):
    """A task's or queue's pause and limits: set at run time, declared in code, in effect."""

    scope: Literal["task", "queue"]
    name: str
    paused: bool = False
    max_concurrency: int | None = None
    rate_limit: str | None = None
    declared_max_concurrency: int | None = None
    declared_rate_limit: str | None = None
    effective_max_concurrency: int | None = None
    effective_rate_limit: str | None = None
    running: int | None = None
