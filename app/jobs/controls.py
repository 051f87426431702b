"""Pause/resume and limits of tasks and queues: the service the API, CLI and dashboard call.

Every write is one upsert of the (scope, name) row of flow_controls; workers read the rows
when they claim (app/jobs/flow.py), so a change holds for every worker process at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.errors import InvalidInput
from app.jobs.validation import text_problem
from app.tasks.limits import Rate, check_queue_name, parse_rate
from app.tasks.registry import TaskSpec

Scope = Literal["task", "queue"]


class ControlUpdate(BaseModel):
    """Body of PATCH /tasks/{task}/controls (and /queues/{queue}/controls).

    A field left out keeps its value; `null` clears a run-time limit, so the one declared in
    code (`@task(max_concurrency=..., rate_limit=...)`) applies again.
    """

    model_config = ConfigDict(extra="forbid")

    paused: bool | None = None
    max_concurrency: int | None = Field(None, ge=1, le=1_000_000)
    rate_limit: str | None = Field(None, max_length=40, examples=["100/minute"])

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)  # ValueError -> 422 naming the field
        return value


class ControlOut(BaseModel):
    """A task's or queue's pause and limits: run-time, declared in code, and in effect."""

    scope: Scope
    name: str
    paused: bool = False
    max_concurrency: int | None = None
    rate_limit: str | None = None
    declared_max_concurrency: int | None = None
    declared_rate_limit: str | None = None
    effective_max_concurrency: int | None = None
    effective_rate_limit: str | None = None
    running: int | None = None  # tasks only: jobs running now under a live lease


class ControlList(BaseModel):
    """GET /controls: every task and queue with a pause or a limit."""

    controls: list[ControlOut]


def _rate_text(count: int | None, period: float | None) -> str | None:
    return str(Rate(count, period)) if count is not None and period is not None else None


def _out(row: Any) -> ControlOut:
    rate = _rate_text(row.rate_count, row.rate_period)
    declared = _rate_text(row.declared_rate_count, row.declared_rate_period)
    return ControlOut(
        scope=row.scope,
        name=row.name,
        paused=row.paused,
        max_concurrency=row.max_concurrency,
        rate_limit=rate,
        declared_max_concurrency=row.declared_max_concurrency,
        declared_rate_limit=declared,
        effective_max_concurrency=row.max_concurrency or row.declared_max_concurrency,
        effective_rate_limit=rate or declared,
        running=getattr(row, "running", None),
    )


_SELECT = """
    SELECT c.*, CASE WHEN c.scope = 'task' THEN
        (SELECT count(*) FROM jobs j WHERE j.status = 'running' AND j.task = c.name
           AND j.lease_expires_at >= now()) END AS running
    FROM flow_controls c
"""


def _check_name(scope: Scope, name: str) -> None:
    if scope == "queue":
        try:
            check_queue_name(name)
        except ValueError as exc:
            raise InvalidInput(str(exc), field="queue") from exc
    elif not name or len(name) > 200:
        raise InvalidInput("task must be 1-200 characters", field="task")
    elif (problem := text_problem(name)) is not None:
        raise InvalidInput(f"task {problem}", field="task")


def get(session: Session, scope: Scope, name: str) -> ControlOut:
    """The controls of one task or queue (defaults when none were ever set)."""
    _check_name(scope, name)
    row = session.execute(
        text(_SELECT + " WHERE c.scope = :scope AND c.name = :name"),
        {"scope": scope, "name": name},
    ).first()
    return _out(row) if row is not None else ControlOut(scope=scope, name=name)


def list_all(session: Session) -> list[ControlOut]:
    """Every task and queue that has a row (paused, limited, or once so)."""
    rows = session.execute(text(_SELECT + " ORDER BY c.scope, c.name"))
    return [_out(r) for r in rows]


def update(session: Session, scope: Scope, name: str, change: ControlUpdate) -> ControlOut:
    """Apply the fields set in `change` (one upsert); the row afterwards."""
    _check_name(scope, name)
    fields = change.model_fields_set
    if scope == "queue" and fields & {"max_concurrency", "rate_limit"}:
        raise InvalidInput("queues can be paused; limits are per task", field="max_concurrency")
    values: dict[str, Any] = {}
    if "paused" in fields and change.paused is not None:
        values["paused"] = change.paused
    if "max_concurrency" in fields:
        values["max_concurrency"] = change.max_concurrency
    if "rate_limit" in fields:
        rate = parse_rate(change.rate_limit) if change.rate_limit else None
        values["rate_count"] = rate.count if rate else None
        values["rate_period"] = rate.period if rate else None
        # A new rate starts with a full bucket.
        values["tokens"] = None
        values["refilled_at"] = None
    if values:
        columns = ", ".join(values)
        params = ", ".join(f":{k}" for k in values)
        sets = ", ".join(f"{k} = EXCLUDED.{k}" for k in values)
        session.execute(
            text(
                f"""INSERT INTO flow_controls (scope, name, {columns}) VALUES (:scope, :name,
                    {params}) ON CONFLICT (scope, name) DO UPDATE SET {sets},
                    updated_at = now()"""
            ),
            {"scope": scope, "name": name, **values},
        )
    return get(session, scope, name)


def set_paused(session: Session, scope: Scope, name: str, paused: bool) -> ControlOut:
    """Pause or resume a task or queue."""
    return update(session, scope, name, ControlUpdate(paused=paused))


_DECLARE = text(
    """
    INSERT INTO flow_controls (scope, name, declared_max_concurrency, declared_rate_count,
                               declared_rate_period)
    SELECT 'task', * FROM unnest(CAST(:names AS text[]), CAST(:conc AS int[]),
                                 CAST(:counts AS int[]), CAST(:periods AS float8[]))
    ON CONFLICT (scope, name) DO UPDATE SET
        declared_max_concurrency = EXCLUDED.declared_max_concurrency,
        declared_rate_count = EXCLUDED.declared_rate_count,
        declared_rate_period = EXCLUDED.declared_rate_period, updated_at = now()
    WHERE (flow_controls.declared_max_concurrency, flow_controls.declared_rate_count,
           flow_controls.declared_rate_period) IS DISTINCT FROM
          (EXCLUDED.declared_max_concurrency, EXCLUDED.declared_rate_count,
           EXCLUDED.declared_rate_period)
    """
)


def declare(session: Session, specs: Sequence[TaskSpec]) -> None:
    """Write the limits tasks declare in code (a worker does at start-up); clear stale ones."""
    limited = [s for s in specs if s.max_concurrency is not None or s.rate_limit is not None]
    if limited:
        session.execute(
            _DECLARE,
            {
                "names": [s.name for s in limited],
                "conc": [s.max_concurrency for s in limited],
                "counts": [s.rate_limit.count if s.rate_limit else None for s in limited],
                "periods": [s.rate_limit.period if s.rate_limit else None for s in limited],
            },
        )
    plain = [s.name for s in specs if s not in limited]
    if plain:
        session.execute(
            text(
                """UPDATE flow_controls SET declared_max_concurrency = NULL,
                       declared_rate_count = NULL, declared_rate_period = NULL
                   WHERE scope = 'task' AND name = ANY(CAST(:names AS text[]))
                     AND (declared_max_concurrency IS NOT NULL
                          OR declared_rate_count IS NOT NULL)"""
            ),
            {"names": plain},
        )
