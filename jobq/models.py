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
    "CronSchedule",
    "ScheduleChanges",
    "ScheduleOptions",
    "SubmitOptions",
    "Workflow",
    "WorkflowEdge",
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
    # In list() results: fields too large to list, replaced by a marker (get() has them whole).
    truncated_fields: list[str] = []
    unique_key: str | None = None
    unique_until: datetime | None = None  # None with a unique_key: held while unfinished
    workflow_id: uuid.UUID | None = None
    schedule_id: uuid.UUID | None = None  # the schedule that submitted it
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
    unique_key: str
    unique_for_seconds: int
    depends_on: list[uuid.UUID | str]
    on_parent_failure: Literal["cancel", "run"]
    workflow_id: uuid.UUID | str
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
    unique_key: str | None = None
    unique_for_seconds: int | None = None
    depends_on: list[uuid.UUID] | None = None
    on_parent_failure: Literal["cancel", "run"] | None = None
    workflow_id: uuid.UUID | None = None
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


class CronSchedule(_Model):
    """A cron or interval schedule (GET /schedules/{name}), with its next and last run."""

    id: uuid.UUID
    name: str
    task: str
    payload: dict[str, Any]
    cron: str | None
    interval_seconds: int | None
    timezone: str
    enabled: bool
    catch_up: Literal["once", "skip"]
    source: Literal["api", "code"]
    priority: Priority
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_job_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class ScheduleOptions(TypedDict, total=False):
    """Keyword options of create_schedule() and update_schedule(): the /schedules fields."""

    payload: dict[str, Any]
    cron: str
    interval_seconds: int
    timezone: str
    enabled: bool
    catch_up: Literal["once", "skip"]
    priority: Priority


class ScheduleChanges(ScheduleOptions, total=False):
    """Keyword options of update_schedule(): those of create_schedule(), and the task."""

    task: str


class WorkflowEdge(_Model):
    """`child_id` waits for `parent_id`."""

    parent_id: uuid.UUID
    child_id: uuid.UUID


class Workflow(_Model):
    """GET /workflows/{id}: its jobs (oldest first), edges, counts and overall status
    (running, succeeded, failed or cancelled)."""

    id: uuid.UUID
    status: str
    counts: dict[str, int]
    jobs: list[Job]
    edges: list[WorkflowEdge]

    @property
    def final(self) -> bool:
        """True once no job of the workflow is unfinished."""
        return self.status != "running"


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
