"""The schedules service: /schedules CRUD and the upsert of schedules declared in code."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, case, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from app.catalogue.cache import Catalogue
from app.db import translate_db_errors
from app.errors import Conflict, JobqError, NotFound
from app.jobs import queries
from app.jobs.states import JobStatus
from app.jobs.validation import check_payload
from app.schedules.models import Schedule
from app.schedules.rules import Rule
from app.schedules.schemas import ScheduleCreate, ScheduleOut, ScheduleUpdate
from app.tasks.registry import Registry

log = logging.getLogger("jobq.schedules")
# The fields whose change moves the next run (recomputed from now).
_RULE_FIELDS = ("cron", "interval_seconds", "timezone")


def _by(ref: str) -> ColumnElement[bool]:
    """A schedule by id (a UUID) or by name."""
    try:
        return Schedule.id == uuid.UUID(ref)
    except ValueError:
        return Schedule.name == ref


class ScheduleService:
    """Create, list, read, change and delete schedules (the ticker fires them)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        catalogue: Catalogue,
        max_depth: int,
        max_attempts: int = 3,
        queue_names: Sequence[str] = ("default",),
    ) -> None:
        self._sessions = sessions
        # Defaults of the jobs run now submits (as the ticker's: job_row).
        self._max_attempts = max_attempts
        self._queue_names = list(queue_names)
        # The task catalogue, like submits: the API has none of the tasks' code.
        self._catalogue = catalogue
        self._max_depth = max_depth

    def _check_job(self, task: str, payload: dict[str, Any]) -> None:
        view = self._catalogue.get(task)
        check_payload(payload, max_depth=self._max_depth)
        self._catalogue.check(view, payload)

    def create(self, req: ScheduleCreate) -> ScheduleOut:
        """A new schedule; Conflict if the name is taken."""
        rule = Rule.parse(req.cron, req.interval_seconds, req.timezone)
        self._check_job(req.task, req.payload)
        values = {**req.model_dump(), "id": uuid.uuid4(), "source": "api"}
        values["next_run_at"] = rule.next_after(datetime.now(UTC))
        stmt = pg_insert(Schedule).values(**values).on_conflict_do_nothing().returning(Schedule)
        with translate_db_errors(), self._sessions.begin() as session:
            row = session.scalar(stmt)
            if row is None:
                raise Conflict(f"a schedule named {req.name!r} exists", field="name")
            return ScheduleOut.model_validate(row)

    def all(self) -> list[ScheduleOut]:
        """Every schedule, by name."""
        with translate_db_errors(), self._sessions() as session:
            rows = session.scalars(select(Schedule).order_by(Schedule.name))
            return [ScheduleOut.model_validate(r) for r in rows]

    def get(self, ref: str) -> ScheduleOut:
        """One schedule by id or name, or NotFound."""
        with translate_db_errors(), self._sessions() as session:
            return ScheduleOut.model_validate(self._one(session, ref, lock=False))

    def update(self, ref: str, req: ScheduleUpdate) -> ScheduleOut:
        """Change the fields given; a new rule, or enabling, moves the next run from now."""
        changes = req.model_dump(exclude_unset=True)
        with translate_db_errors(), self._sessions.begin() as session:
            # Locked: the ticker (SKIP LOCKED) leaves it alone until this commits.
            row = self._one(session, ref, lock=True)
            if "cron" in changes and changes["cron"] is not None:
                changes["interval_seconds"] = None
            elif changes.get("interval_seconds") is not None:
                changes["cron"] = None
            merged = {f: changes.get(f, getattr(row, f)) for f in (*_RULE_FIELDS, "task")}
            rule = Rule.parse(merged["cron"], merged["interval_seconds"], merged["timezone"])
            if changes.get("task") is not None or changes.get("payload") is not None:
                payload = changes.get("payload")
                self._check_job(merged["task"], row.payload if payload is None else payload)
            moved = any(f in changes for f in _RULE_FIELDS) or (
                changes.get("enabled") is True and not row.enabled
            )
            for name, value in changes.items():
                if value is not None or name in ("cron", "interval_seconds"):
                    setattr(row, name, value)
            if moved:
                row.next_run_at = rule.next_after(datetime.now(UTC))
            row.updated_at = datetime.now(UTC)
            session.flush()
            return ScheduleOut.model_validate(row)

    def delete(self, ref: str) -> None:
        """Delete a schedule (its jobs stay); NotFound if there is none."""
        with translate_db_errors(), self._sessions.begin() as session:
            if session.execute(delete(Schedule).where(_by(ref)).returning(Schedule.id)).first():
                return
        raise NotFound(f"schedule {ref!r} not found", field="name")

    def run_now(self, ref: str) -> uuid.UUID:
        """Submit the schedule's job now, outside its rule (a disabled schedule's too); the
        next regular run stays where it was. The id of the new job.

        The job is inserted due at once (status scheduled, run_at now) under its own tick,
        this instant, so it never takes a regular tick's place; the dispatcher sends it on
        its next pass, as it does a scheduled job's "run now".
        """
        with translate_db_errors(), self._sessions.begin() as session:
            row = self._one(session, ref, lock=True)
            now: datetime = session.execute(select(func.now())).scalar_one()
            job = job_row(
                self._catalogue,
                row,
                now,
                max_attempts=self._max_attempts,
                queue_names=self._queue_names,
            )
            job.update(status=JobStatus.SCHEDULED.value, run_at=now)
            inserted = queries.insert_tick(session, job)
            if inserted is None:  # a regular tick at this very instant: that is its job
                raise Conflict("the schedule fired at this instant: try again", field="name")
            row.last_run_at, row.last_job_id, row.updated_at = now, inserted.id, now
            log.info("schedule run now", extra={"schedule": row.name, "job_id": str(inserted.id)})
            return uuid.UUID(str(inserted.id))

    @staticmethod
    def _one(session: Session, ref: str, *, lock: bool) -> Schedule:
        stmt = select(Schedule).where(_by(ref))
        row = session.scalar(stmt.with_for_update() if lock else stmt)
        if row is None:
            raise NotFound(f"schedule {ref!r} not found", field="name")
        return row


def job_row(
    catalogue: Catalogue,
    schedule: Schedule,
    tick: datetime,
    *,
    max_attempts: int,
    queue_names: Sequence[str],
) -> dict[str, Any]:
    """The queued job a schedule submits for `tick`. Attempts, timeout and named queue come
    from the task catalogue the workers publish: this process may have none of the task's
    code."""
    attempts, timeout, queue = None, None, None
    try:
        task = catalogue.get(schedule.task).newest
        attempts, timeout, queue = task.max_attempts, task.timeout_seconds, task.queue
    except JobqError:
        # No worker published it (yet): the global defaults; a worker fails it if unknown.
        pass
    return {
        "id": uuid.uuid4(),
        "task": schedule.task,
        "status": JobStatus.QUEUED.value,
        "payload": schedule.payload,
        "max_attempts": attempts or max_attempts,
        "timeout_seconds": timeout,
        "priority": schedule.priority,
        "queue": queue if queue in queue_names else "default",
        "schedule_id": schedule.id,
        "schedule_tick": tick,
    }


def sync_code_schedules(sessions: sessionmaker[Session], registry: Registry) -> int:
    """Upsert the schedules of tasks declared with @task(schedule=...); return how many.

    Named after the task. A changed expression or time zone moves the next run; `enabled`
    (PATCH /schedules) is never touched, so a schedule disabled at run time stays disabled.
    A schedule made through the API under the same name is left alone.
    """
    specs = [registry.get(n) for n in registry.names()]
    rows = []
    now = datetime.now(UTC)
    for spec in specs:
        if spec.schedule is None:
            continue
        rule = Rule.parse(spec.schedule, None, spec.tz)
        rows.append(
            {
                "id": uuid.uuid4(),
                "name": spec.name,
                "task": spec.name,
                "cron": spec.schedule,
                "timezone": spec.tz,
                "source": "code",
                "next_run_at": rule.next_after(now),
            }
        )
    if not rows:
        return 0
    stmt = pg_insert(Schedule).values(rows)
    ex = stmt.excluded
    changed = (Schedule.cron.is_distinct_from(ex.cron)) | (
        Schedule.timezone.is_distinct_from(ex.timezone)
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[Schedule.name],
        set_={
            "cron": ex.cron,
            "interval_seconds": None,
            "timezone": ex.timezone,
            "next_run_at": case((changed, ex.next_run_at), else_=Schedule.next_run_at),
            "updated_at": case((changed, now), else_=Schedule.updated_at),
        },
        where=Schedule.source == "code",
    )
    with translate_db_errors(), sessions.begin() as session:
        session.execute(stmt)
    log.info("declared %d schedule(s) from code", len(rows))
    return len(rows)
