"""Jobs as the API shows them, with large fields cut by PostgreSQL: a 20 MB result is never
loaded into the API to be shown (or dropped) in a list.

A JSON field (payload, result) over its cap becomes the marker {"truncated": true, "bytes": N}
(N: the size of its JSON text); an error over its cap keeps its first characters; either way
the field is named in `truncated_fields`. Lists use JOBQ_LIST_FIELD_MAX_BYTES; one job
(GET /jobs/{id}) caps that only values beyond what the API and worker accept ever reach.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    Table,
    Text,
    and_,
    case,
    func,
    literal,
    select,
    true,
    tuple_,
)
from sqlalchemy import (
    cast as sql_cast,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import InvalidInput
from app.jobs.filters import JobFilter
from app.jobs.models import Job, JobAttempt
from app.jobs.schemas import AttemptOut, JobOut
from app.jobs.states import JobStatus

JOBS = cast(Table, Job.__table__)
ATTEMPTS = cast(Table, JobAttempt.__table__)
_CAPPED = ("payload", "result", "error")
TRACEBACK_MAX_CHARS = 1024 * 1024  # a bound for rows written by other versions
_PLAIN = [c for c in JobOut.model_fields if c not in (*_CAPPED, "truncated_fields")]


@dataclass(frozen=True)
class Caps:
    """The largest payload and result (bytes of JSON text) and error (characters) shown."""

    payload_bytes: int
    result_bytes: int
    error_chars: int

    @classmethod
    def for_lists(cls, settings: Settings) -> Caps:
        """Every field of a job in a list (GET /jobs, the dashboard, /stats)."""
        cap = settings.list_field_max_bytes
        return cls(cap, cap, cap)

    @classmethod
    def for_one_job(cls, settings: Settings) -> Caps:
        """GET /jobs/{id}: twice the accepted sizes (PostgreSQL's JSON text adds a space after
        every ':' and ','), so everything accepted is shown whole."""
        return cls(
            2 * settings.max_payload_bytes, 2 * settings.max_result_bytes, settings.max_result_bytes
        )


def _sized(page: Any, caps: Caps) -> Select[Any]:
    """The jobs in `page` (a subquery of ids) with capped fields and their sizes."""
    j = JOBS.alias("j")
    # OFFSET 0 keeps PostgreSQL from inlining the sizes into each use: a 20 MB value is
    # turned into text once, not three times.
    sizes = (
        select(
            func.octet_length(sql_cast(j.c.payload, Text)).label("payload_bytes"),
            func.octet_length(sql_cast(j.c.result, Text)).label("result_bytes"),
            func.char_length(j.c.error).label("error_chars"),
        )
        .correlate(j)
        .offset(0)
        .lateral("sizes")
    )
    return (
        select(
            *[j.c[name] for name in _PLAIN],
            _json_capped(j.c.payload, sizes.c.payload_bytes, caps.payload_bytes).label("payload"),
            _json_capped(j.c.result, sizes.c.result_bytes, caps.result_bytes).label("result"),
            func.left(j.c.error, caps.error_chars).label("error"),
            (sizes.c.payload_bytes > caps.payload_bytes).label("payload_cut"),
            (sizes.c.result_bytes > caps.result_bytes).label("result_cut"),
            (sizes.c.error_chars > caps.error_chars).label("error_cut"),
        )
        .select_from(page.join(j, j.c.id == page.c.id).join(sizes, true()))
        .order_by(j.c.created_at.desc(), j.c.id.desc())
    )


def _json_capped(value: Any, size: Any, cap: int) -> ColumnElement[Any]:
    marker = func.jsonb_build_object(literal("truncated"), true(), literal("bytes"), size)
    return case((size > cap, marker), else_=value).cast(JSONB)


def _view(row: Row[Any]) -> JobOut:
    values = row._mapping
    cut = [name for name in _CAPPED if values[f"{name}_cut"]]
    fields = {name: values[name] for name in (*_PLAIN, *_CAPPED)}
    return JobOut.model_validate({**fields, "truncated_fields": cut})


def encode_cursor(job: JobOut) -> str:
    """An opaque cursor pointing just after `job` in newest-first order."""
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Parse a cursor from encode_cursor, or raise InvalidInput naming `cursor`."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, job_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|")
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("naive timestamp")
        return when, uuid.UUID(job_id)
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise InvalidInput("cursor is not a valid cursor", field="cursor") from exc


def one_job(session: Session, job_id: uuid.UUID, caps: Caps) -> JobOut | None:
    """The job with fields cut to `caps`, or None."""
    page = select(JOBS.c.id).where(JOBS.c.id == job_id).subquery("page")
    row = session.execute(_sized(page, caps)).one_or_none()
    return None if row is None else _view(row)


def list_page(
    session: Session,
    caps: Caps,
    *,
    status: JobStatus | None,
    task: str | None,
    limit: int,
    cursor: str | None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    idempotency_key: str | None = None,
) -> tuple[list[JobOut], str | None]:
    """A newest-first page of jobs (keyset pagination on (created_at, id), no OFFSET), fields
    cut to `caps`; only the page's rows are measured."""
    conditions: list[ColumnElement[bool]] = []
    if status is not None:
        conditions.append(JOBS.c.status == status.value)
    if task is not None:
        conditions.append(JOBS.c.task == task)
    if created_after is not None:
        conditions.append(JOBS.c.created_at > created_after)
    if created_before is not None:
        conditions.append(JOBS.c.created_at < created_before)
    if idempotency_key is not None:
        conditions.append(JOBS.c.idempotency_key == idempotency_key)
    return _page_where(session, caps, conditions, limit=limit, cursor=cursor)


def search_page(
    session: Session, caps: Caps, search: JobFilter, *, limit: int, cursor: str | None
) -> tuple[list[JobOut], str | None]:
    """list_page for a dashboard search (every JobFilter field)."""
    return _page_where(session, caps, search.conditions(), limit=limit, cursor=cursor)


def count_matching(session: Session, search: JobFilter, *, up_to: int) -> int:
    """How many jobs match, counting no further than `up_to` (a bounded scan)."""
    ids = select(JOBS.c.id).where(and_(true(), *search.conditions())).limit(up_to).subquery()
    return int(session.execute(select(func.count()).select_from(ids)).scalar_one())


def _page_where(
    session: Session,
    caps: Caps,
    conditions: list[ColumnElement[bool]],
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[JobOut], str | None]:
    if cursor:
        created, job_id = decode_cursor(cursor)
        conditions = [
            *conditions,
            tuple_(JOBS.c.created_at, JOBS.c.id) < tuple_(created, job_id),
        ]
    page = (
        select(JOBS.c.id)
        .where(and_(true(), *conditions))
        .order_by(JOBS.c.created_at.desc(), JOBS.c.id.desc())
        .limit(limit + 1)
        .subquery("page")
    )
    items = [_view(row) for row in session.execute(_sized(page, caps))]
    if len(items) > limit:
        return items[:limit], encode_cursor(items[limit - 1])
    return items, None


def workflow_jobs(session: Session, workflow_id: uuid.UUID, caps: Caps, limit: int) -> list[JobOut]:
    """The jobs of a workflow, oldest first, fields cut to `caps` (at most `limit`)."""
    page = (
        select(JOBS.c.id)
        .where(JOBS.c.workflow_id == workflow_id)
        .order_by(JOBS.c.created_at, JOBS.c.id)
        .limit(limit)
        .subquery("page")
    )
    return [_view(row) for row in session.execute(_sized(page, caps))][::-1]


def attempts(
    session: Session,
    job_id: uuid.UUID,
    error_chars: int,
    *,
    newest: int | None = None,
    traceback_chars: int | None = None,
) -> Sequence[AttemptOut]:
    """Every recorded attempt of a job (or its `newest`), oldest first, errors cut to
    `error_chars` and tracebacks to `traceback_chars`."""
    a = ATTEMPTS
    tb_chars = min(traceback_chars or TRACEBACK_MAX_CHARS, TRACEBACK_MAX_CHARS)
    stmt = (
        select(
            a.c.attempt,
            a.c.series,
            a.c.outcome,
            func.left(a.c.error, error_chars).label("error"),
            # Stored already capped by the worker (JOBQ_MAX_TRACEBACK_BYTES).
            func.left(a.c.traceback, tb_chars).label("traceback"),
            a.c.worker_id,
            a.c.started_at,
            a.c.finished_at,
        )
        .where(a.c.job_id == job_id)
        .order_by(a.c.id.desc())
        .limit(newest)
    )
    return [AttemptOut.model_validate(row) for row in reversed(session.execute(stmt).all())]
