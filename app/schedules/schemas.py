"""Request and response bodies of /schedules."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.schemas import Priority
from app.jobs.validation import SafeStr
from app.schedules.rules import MAX_INTERVAL_SECONDS

CatchUp = Literal["once", "skip"]


class ScheduleCreate(BaseModel):
    """Body of POST /schedules: exactly one of `cron` and `interval_seconds`."""

    model_config = ConfigDict(extra="forbid")

    name: SafeStr = Field(min_length=1, max_length=200, examples=["nightly-report"])
    task: SafeStr = Field(min_length=1, max_length=200, examples=["echo"])
    payload: dict[str, Any] = Field(default_factory=dict)
    cron: SafeStr | None = Field(None, min_length=1, max_length=200, examples=["*/5 * * * *"])
    interval_seconds: int | None = Field(None, ge=1, le=MAX_INTERVAL_SECONDS)
    timezone: SafeStr = Field("UTC", min_length=1, max_length=64, examples=["Europe/Berlin"])
    enabled: bool = True
    catch_up: CatchUp = "once"
    priority: Priority = "default"


class ScheduleUpdate(BaseModel):
    """Body of PATCH /schedules/{name}: only the fields given change (a new `cron` replaces an
    interval and the other way round)."""

    model_config = ConfigDict(extra="forbid")

    task: SafeStr | None = Field(None, min_length=1, max_length=200)
    payload: dict[str, Any] | None = None
    cron: SafeStr | None = Field(None, min_length=1, max_length=200)
    interval_seconds: int | None = Field(None, ge=1, le=MAX_INTERVAL_SECONDS)
    timezone: SafeStr | None = Field(None, min_length=1, max_length=64)
    enabled: bool | None = None
    catch_up: CatchUp | None = None
    priority: Priority | None = None


class ScheduleOut(BaseModel):
    """A schedule as the API shows it, with its next and last run."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    task: str
    payload: dict[str, Any]
    cron: str | None
    interval_seconds: int | None
    timezone: str
    enabled: bool
    catch_up: CatchUp
    source: Literal["api", "code"]
    priority: Priority
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_job_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class ScheduleList(BaseModel):
    """Every schedule, by name."""

    items: list[ScheduleOut]


class ScheduleRun(BaseModel):
    """POST /schedules/{name}/run: the job submitted now (due at once; the dispatcher sends it)."""

    job_id: uuid.UUID
