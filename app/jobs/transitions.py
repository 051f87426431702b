"""Guarded status transitions: each is one conditional UPDATE ... RETURNING.

Zero rows back means the transition was not allowed (a duplicate delivery, a lost lease,
a job already finished), so callers never act on a stale view of a job.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

from app.jobs.states import JobStatus, sources

S = JobStatus


def _in(target: JobStatus) -> str:
    """SQL list of the statuses `target` may be entered from, from the transitions table."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(sources(target))) + ")"


@dataclass(frozen=True)
class Claimed:
    """A job this worker now runs, as attempt `attempt`."""

    job_id: uuid.UUID
    task: str
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    timeout_seconds: float | None
    trace_id: str | None
    started_at: datetime
    lost_previous: bool  # the previous attempt's worker died holding the job
    queued_at: datetime | None = None  # when it became due (for the queue-wait metric)


@dataclass(frozen=True)
class JobView:
    """Just what a worker needs to decide about a message it could not claim."""

    status: JobStatus
    attempts: int
    max_attempts: int
    lease_seconds_left: float
    run_at_seconds_left: float = 0.0


_CLAIM = text(
    f"""
    WITH prev AS (
        SELECT id, status, worker_id, greatest(updated_at, run_at) AS queued_at
        FROM jobs WHERE id = :id FOR UPDATE
    )
    UPDATE jobs AS j SET
        status = 'running', attempts = j.attempts + 1, worker_id = :worker,
        lease_expires_at = now() + make_interval(secs => :lease),
        started_at = coalesce(j.started_at, now()), updated_at = now(),
        published_at = coalesce(j.published_at, now())
    FROM prev
    WHERE j.id = prev.id AND j.attempts < least(j.max_attempts, :cap)
      AND j.status IN {_in(S.RUNNING)}
      AND (j.status <> 'running' OR j.lease_expires_at < now())
      AND (j.run_at IS NULL OR j.run_at <= now() + interval '1 second')
    RETURNING j.id, j.task, j.payload, j.attempts, j.max_attempts, j.timeout_seconds,
              j.trace_id, now() AS started,
              prev.status AS prev_status, prev.worker_id AS prev_worker, prev.queued_at
    """
)

_RECORD_LOST = text(
    """
    INSERT INTO job_attempts (job_id, attempt, outcome, error, worker_id)
    VALUES (:id, :attempt, 'lost', 'worker stopped heartbeating (killed or hung)', :worker)
    """
)


def claim(
    session: Session, job_id: uuid.UUID, worker_id: str, lease_seconds: float, cap: int
) -> Claimed | None:
    """queued|retrying|running-with-expired-lease -> running, attempts += 1, lease set."""
    row = session.execute(
        _CLAIM, {"id": job_id, "worker": worker_id, "lease": lease_seconds, "cap": cap}
    ).one_or_none()
    if row is None:
        return None
    lost = row.prev_status == S.RUNNING.value
    if lost:
        session.execute(
            _RECORD_LOST, {"id": job_id, "attempt": row.attempts - 1, "worker": row.prev_worker}
        )
    return Claimed(
        job_id=row.id,
        task=row.task,
        payload=row.payload,
        attempt=row.attempts,
        max_attempts=row.max_attempts,
        timeout_seconds=row.timeout_seconds,
        trace_id=row.trace_id,
        started_at=row.started,
        lost_previous=lost,
        queued_at=row.queued_at,
    )


def view(session: Session, job_id: uuid.UUID) -> JobView | None:
    """Status, attempts and remaining lease of a job, or None if it does not exist."""
    row = session.execute(
        text(
            """SELECT status, attempts, max_attempts,
                 greatest(0, extract(epoch FROM lease_expires_at - now())) AS left,
                 greatest(0, extract(epoch FROM run_at - now())) AS run_left
               FROM jobs WHERE id = :id"""
        ),
        {"id": job_id},
    ).one_or_none()
    if row is None:
        return None
    return JobView(
        S(row.status),
        row.attempts,
        row.max_attempts,
        float(row.left or 0),
        float(row.run_left or 0),
    )


# A cancellation request wins over whatever the attempt produced.
_FINISH = text(
    """
    WITH u AS (
        UPDATE jobs SET
            status = CASE WHEN cancel_requested_at IS NULL THEN :status ELSE 'cancelled' END,
            result = CAST(:result AS jsonb),
            error = CASE WHEN cancel_requested_at IS NULL THEN :error
                         ELSE coalesce(:error, 'cancelled while running') END,
            finished_at = CASE WHEN cancel_requested_at IS NULL AND :status = 'retrying'
                               THEN NULL ELSE now() END,
            updated_at = now(), lease_expires_at = NULL
        WHERE id = :id AND status = 'running' AND worker_id = :worker AND attempts = :attempt
        RETURNING id, status
    ), a AS (
        INSERT INTO job_attempts (job_id, attempt, outcome, error, worker_id, started_at)
        SELECT id, :attempt, CASE WHEN status = 'cancelled' THEN 'cancelled' ELSE :outcome END,
               :error, :worker, :started
        FROM u
    )
    SELECT status FROM u
    """
)


def finish(
    session: Session,
    claimed: Claimed,
    worker_id: str,
    *,
    status: JobStatus,
    outcome: str,
    result: Any = None,
    error: str | None = None,
) -> JobStatus | None:
    """running -> succeeded|retrying|failed (or cancelled if requested); None if not ours."""
    if S.RUNNING not in sources(status):
        raise ValueError(f"running -> {status} is not a transition")
    row = session.execute(
        _FINISH,
        {
            "id": claimed.job_id,
            "status": status.value,
            "result": None if result is None else json.dumps(result),
            "error": error,
            "worker": worker_id,
            "attempt": claimed.attempt,
            "outcome": outcome,
            "started": claimed.started_at,
        },
    ).one_or_none()
    return None if row is None else S(row.status)


def extend_leases(
    session: Session, worker_id: str, job_ids: list[uuid.UUID], lease_seconds: float
) -> dict[uuid.UUID, bool]:
    """Heartbeat: push this worker's leases; return held job id -> cancellation requested."""
    if not job_ids:
        return {}
    stmt = text(
        """UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease)
           WHERE id IN :ids AND status = 'running' AND worker_id = :worker
           RETURNING id, cancel_requested_at IS NOT NULL"""
    ).bindparams(bindparam("ids", expanding=True))
    rows = session.execute(stmt, {"ids": job_ids, "worker": worker_id, "lease": lease_seconds})
    return {r[0]: bool(r[1]) for r in rows}


def fail_exhausted(session: Session, job_id: uuid.UUID, reason: str, dead_letter: bool) -> bool:
    """A job whose retries are used up (or that reached the DLQ) ends failed with a reason."""
    stmt = text(
        f"""UPDATE jobs SET status = 'failed',
               error = CASE WHEN error IS NULL THEN :reason
                            ELSE :reason || '; last error: ' || error END,
               finished_at = now(), updated_at = now(), lease_expires_at = NULL,
               dead_lettered_at = CASE WHEN :dlq THEN now() END
           WHERE id = :id AND status IN {_in(S.FAILED)}
             AND (status <> 'running' OR lease_expires_at < now())
           RETURNING id"""
    )
    return (
        session.execute(stmt, {"id": job_id, "reason": reason, "dlq": dead_letter}).first()
        is not None
    )


def mark_dead_lettered(session: Session, job_id: uuid.UUID) -> None:
    """Note on an already-failed job that its message reached the dead-letter queue."""
    session.execute(
        text(
            """UPDATE jobs SET dead_lettered_at = now(), updated_at = now()
               WHERE id = :id AND status = 'failed' AND dead_lettered_at IS NULL"""
        ),
        {"id": job_id},
    )
