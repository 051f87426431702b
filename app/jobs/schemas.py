"""Request and response bodies of the jobs API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.states import JobStatus

MAX_LIST_LIMIT = 500


class JobCreate(BaseModel):
    """Body of POST /jobs."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=200, examples=["echo"])
    payload: dict[str, Any] = Field(default_factory=dict, examples=[{"hello": "world"}])


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
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobList(BaseModel):
    """A page of jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""

    items: list[JobOut]
    next_cursor: str | None


class AttemptOut(BaseModel):
    """One recorded attempt of a job."""

    model_config = ConfigDict(from_attributes=True)

    attempt: int
    outcome: str
    error: str | None
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime


class ErrorDetail(BaseModel):
    """What went wrong, and which field (dotted path) if one is to blame."""

    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """Every 4xx/5xx response body."""

    error: ErrorDetail
