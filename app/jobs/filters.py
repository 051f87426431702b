"""A job search (the dashboard's filters): parsed from query parameters, turned into SQL
conditions, and back into a query string, so that a search lives in the URL."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Table

from app.errors import InvalidInput
from app.jobs.models import Job
from app.jobs.states import JobStatus

JOBS = cast(Table, Job.__table__)
PRIORITIES = ("high", "default", "low")
TEXT_MAX = 255  # a search term longer than any idempotency key or task name is a mistake


@dataclass(frozen=True)
class JobFilter:
    """What to match; None (or False) matches everything."""

    id: uuid.UUID | None = None
    idempotency_key: str | None = None
    task: str | None = None
    status: JobStatus | None = None
    queue: str | None = None  # a priority: high, default or low (each has its SQS queue)
    error: str | None = None  # case-insensitive substring of the error
    created_after: datetime | None = None
    created_before: datetime | None = None
    finished_after: datetime | None = None
    finished_before: datetime | None = None
    dead_lettered: bool = False

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> JobFilter:
        """From query parameters (empty ones ignored); InvalidInput names a bad field."""
        raw = {k: _clean(params.get(k)) for k in (f.name for f in fields(cls))}
        values: dict[str, Any] = {}
        if raw["id"]:
            try:
                values["id"] = uuid.UUID(raw["id"])
            except ValueError as exc:
                raise InvalidInput("id is not a job id (a UUID)", field="id") from exc
        for name in ("idempotency_key", "task", "error"):
            if raw[name]:
                if len(raw[name]) > TEXT_MAX:
                    raise InvalidInput(f"{name} is over {TEXT_MAX} characters", field=name)
                values[name] = raw[name]
        if raw["status"]:
            if raw["status"] not in {s.value for s in JobStatus}:
                raise InvalidInput(f"status {raw['status']!r} is not a job status", field="status")
            values["status"] = JobStatus(raw["status"])
        if raw["queue"]:
            if raw["queue"] not in PRIORITIES:
                raise InvalidInput("queue must be high, default or low", field="queue")
            values["queue"] = raw["queue"]
        for name in ("created_after", "created_before", "finished_after", "finished_before"):
            if raw[name]:
                values[name] = _when(raw[name], name)
        values["dead_lettered"] = raw["dead_lettered"] in ("1", "true", "on", "yes")
        for low, high in (
            ("created_after", "created_before"),
            ("finished_after", "finished_before"),
        ):
            if low in values and high in values and values[low] >= values[high]:
                raise InvalidInput(f"{low} must be before {high}", field=low)
        return cls(**values)

    def params(self) -> dict[str, str]:
        """The non-empty fields as query parameters (the inverse of parse)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value is False:
                continue
            if isinstance(value, datetime):
                naive = value.astimezone(UTC).replace(tzinfo=None)
                exact = naive.second or naive.microsecond
                out[f.name] = naive.isoformat(timespec="auto" if exact else "minutes")
            elif value is True:
                out[f.name] = "1"
            else:
                out[f.name] = str(value)
        return out

    def query(self, **extra: str) -> str:
        """`?a=b&...` for links (empty string when nothing is set)."""
        params = {**self.params(), **{k: v for k, v in extra.items() if v}}
        return f"?{urlencode(params)}" if params else ""

    @property
    def empty(self) -> bool:
        """True when the filter matches every job."""
        return not self.params()

    def with_status(self, status: JobStatus | None) -> JobFilter:
        """The same search narrowed to one status."""
        return replace(self, status=status)

    def conditions(self, jobs: Table = JOBS) -> list[ColumnElement[bool]]:
        """SQL conditions on `jobs` (the jobs table or an alias of it)."""
        c = jobs.c
        out: list[ColumnElement[bool]] = []
        if self.id is not None:
            out.append(c.id == self.id)
        if self.idempotency_key is not None:
            out.append(c.idempotency_key == self.idempotency_key)
        if self.task is not None:
            out.append(c.task == self.task)
        if self.status is not None:
            out.append(c.status == self.status.value)
        if self.queue is not None:
            out.append(c.priority == self.queue)
        if self.error is not None:
            out.append(c.error.ilike(f"%{_like_escape(self.error)}%", escape="\\"))
        if self.created_after is not None:
            out.append(c.created_at >= self.created_after)
        if self.created_before is not None:
            out.append(c.created_at < self.created_before)
        if self.finished_after is not None:
            out.append(c.finished_at >= self.finished_after)
        if self.finished_before is not None:
            out.append(c.finished_at < self.finished_before)
        if self.dead_lettered:
            out.append(c.dead_lettered_at.isnot(None))
        return out


def _clean(value: str | None) -> str:
    # Browser input: NUL cannot reach PostgreSQL text, surrounding blanks are never meant.
    return (value or "").replace("\x00", "").strip()


def _like_escape(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _when(value: str, field: str) -> datetime:
    """An ISO date or date-time (a datetime-local input's value); naive means UTC."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(
            f"{field} is not a date or time (YYYY-MM-DDTHH:MM)", field=field
        ) from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)
