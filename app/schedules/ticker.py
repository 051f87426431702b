"""The schedule ticker: submits one job per due tick of every enabled schedule.

It runs wherever the dispatcher runs (API processes with JOBQ_DISPATCHER, `jobq dispatcher`);
several may run at once. Due schedules are locked FOR UPDATE SKIP LOCKED, so one ticker fires
each, and the job insert is guarded by the unique index on (schedule_id, schedule_tick): a
tick has one job however many tickers, restarts or clock skews there are.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.catalogue.cache import Catalogue
from app.catalogue.wiring import build_catalogue
from app.config import Settings
from app.db import translate_db_errors
from app.errors import JobqError
from app.jobs import queries
from app.jobs.states import JobStatus
from app.loops import PeriodicLoop
from app.runtime import Runtime
from app.schedules.models import Schedule
from app.schedules.rules import Rule
from app.schedules.service import sync_code_schedules
from app.sqs.queue import Outgoing, SqsQueue
from app.tasks.registry import Registry

log = logging.getLogger("jobq.schedules")
FIRE_BATCH = 100  # schedules fired per transaction


def tick_for(schedule: Schedule, rule: Rule, now: datetime) -> datetime | None:
    """The tick to submit a job for now, or None (catch_up 'skip' and ticks were missed).

    Several ticks missed (every ticker was down): 'once' submits one job, for the latest of
    them; 'skip' submits none and waits for the next tick. A tick merely late (no later tick
    has passed yet) runs under both policies.
    """
    due = schedule.next_run_at
    assert due is not None
    latest = max(rule.latest(now), due)
    if schedule.catch_up == "skip" and latest > due:
        return None
    return latest


class Ticker(PeriodicLoop):
    """Fires due schedules every JOBQ_SCHEDULE_INTERVAL_SECONDS; upserts code schedules once."""

    def __init__(
        self,
        sqs: SqsQueue,
        sessions: sessionmaker[Session],
        registry: Registry,
        settings: Settings,
        catalogue: Catalogue | None = None,
    ) -> None:
        super().__init__("jobq-schedules", interval=settings.schedule_interval_seconds, logger=log)
        self._sqs = sqs
        self._sessions = sessions
        self._registry = registry
        # Job defaults (attempts, timeout, named queue) come from the task catalogue the
        # workers publish: this process may have none of the task's code.
        self._catalogue = catalogue or build_catalogue(sessions, settings)
        self._max_attempts = settings.max_attempts
        self._queue_names = settings.queue_names
        self._synced = False

    def tick(self) -> float | None:
        """Declare code schedules (once), then fire what is due; again at once if more is."""
        if not self._synced:
            sync_code_schedules(self._sessions, self._registry)
            self._synced = True
        return 0 if self.fire_due() >= FIRE_BATCH else None

    def fire_due(self) -> int:
        """Submit the jobs of due schedules (one transaction), then send them; how many
        schedules were due."""
        with translate_db_errors(), self._sessions.begin() as session:
            rows = session.execute(
                select(Schedule, func.now())
                .where(Schedule.enabled, Schedule.next_run_at <= func.now())
                .order_by(Schedule.next_run_at)
                .limit(FIRE_BATCH)
                .with_for_update(skip_locked=True)
            ).all()
            out = [o for schedule, now in rows if (o := self._fire(session, schedule, now))]
        self._send(out)
        return len(rows)

    def _fire(self, session: Session, schedule: Schedule, now: datetime) -> Outgoing | None:
        rule = Rule(schedule.cron, schedule.interval_seconds, schedule.timezone)
        tick = tick_for(schedule, rule, now)
        schedule.next_run_at = rule.next_after(now)
        schedule.updated_at = now
        if tick is None:
            log.info("schedule %s: missed ticks skipped (catch_up=skip)", schedule.name)
            return None
        inserted = queries.insert_tick(session, self._job_row(schedule, tick))
        schedule.last_run_at = tick
        if inserted is None:
            return None  # another ticker submitted this tick's job already
        schedule.last_job_id = inserted.id
        extra = {"job_id": str(inserted.id), "task": schedule.task, "schedule": schedule.name}
        log.info("schedule fired", extra=extra)
        return Outgoing(inserted.id, inserted.trace_id, 0, inserted.priority, inserted.queue)

    def _job_row(self, schedule: Schedule, tick: datetime) -> dict[str, Any]:
        max_attempts, timeout, queue = None, None, None
        try:
            task = self._catalogue.get(schedule.task).newest
            max_attempts, timeout, queue = task.max_attempts, task.timeout_seconds, task.queue
        except JobqError:
            # No worker published it (yet): the global defaults; a worker fails it if unknown.
            pass
        return {
            "id": uuid.uuid4(),
            "task": schedule.task,
            "status": JobStatus.QUEUED.value,
            "payload": schedule.payload,
            "max_attempts": max_attempts or self._max_attempts,
            "timeout_seconds": timeout,
            "priority": schedule.priority,
            "queue": queue if queue in self._queue_names else "default",
            "schedule_id": schedule.id,
            "schedule_tick": tick,
        }

    def _send(self, out: list[Outgoing]) -> None:
        """After commit: send the new jobs; a failed send is re-sent by the dispatcher."""
        if not out:
            return
        try:
            sent = self._sqs.send_batch(out)
            with translate_db_errors(), self._sessions.begin() as session:
                queries.mark_published(session, sent)
        except JobqError as exc:
            log.warning("sending scheduled jobs failed (the dispatcher re-sends them): %s", exc)


def build_ticker(
    runtime: Runtime, settings: Settings, catalogue: Catalogue | None = None
) -> Ticker:
    """The ticker as the API (in-process) and `jobq dispatcher` run it."""
    return Ticker(runtime.sqs, runtime.sessions, runtime.registry, settings, catalogue)
