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

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.orm import Session

from app.jobs.states import JobStatus, sources

S = JobStatus
# Every transition runs on an ORM session or on a Core connection (the worker's hot path).
Db = Session | Connection


# The hot statements find their rows through the primary key only. `(status ...) IS TRUE` is
# not an index condition, so it keeps the planner off ix_jobs_status_created: on statistics
# that predate a fresh backlog it believes few rows are unfinished and would otherwise scan
# every one of them for each batch (10-17 ms instead of 0.5 ms with 5,000 queued jobs,
# measured with EXPLAIN ANALYZE on a freshly loaded backlog).
BY_ID = "j.id = ANY(CAST(:ids AS uuid[]))"


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
        -- Lock in id order so two claimers of overlapping batches cannot deadlock.
        SELECT id, status, worker_id, greatest(updated_at, run_at) AS queued_at
        FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR UPDATE
    ), u AS (
        UPDATE jobs AS j SET
            status = 'running', attempts = j.attempts + 1, worker_id = :worker,
            lease_expires_at = now() + make_interval(secs => :lease),
            started_at = coalesce(j.started_at, now()), updated_at = now(),
            published_at = coalesce(j.published_at, now())
        FROM prev
        WHERE {BY_ID} AND j.id = prev.id AND j.attempts < least(j.max_attempts, :cap)
          AND (j.status IN {_in(S.RUNNING)}) IS TRUE
          AND (j.status <> 'running' OR j.lease_expires_at < now())
          AND (j.run_at IS NULL OR j.run_at <= now() + interval '1 second')
        RETURNING j.id, j.task, j.payload, j.attempts, j.max_attempts, j.timeout_seconds,
                  j.trace_id, now() AS started,
                  prev.status AS prev_status, prev.worker_id AS prev_worker, prev.queued_at
    ), lost AS (
        -- The previous attempt's worker died holding the job: record that attempt as lost.
        INSERT INTO job_attempts (job_id, attempt, outcome, error, worker_id)
        SELECT id, attempts - 1, 'lost', 'worker stopped heartbeating (killed or hung)',
               prev_worker
        FROM u WHERE prev_status = 'running'
    )
    SELECT * FROM u
    """
)


def claim_many(
    session: Db, job_ids: list[uuid.UUID], worker_id: str, lease_seconds: float, cap: int
) -> dict[uuid.UUID, Claimed]:
    """Claim every claimable job of a receive in one statement; job id -> Claimed.

    queued|retrying|running-with-expired-lease -> running, attempts += 1, lease set. Ids not
    in the result could not be claimed (duplicate delivery, finished, exhausted, not due).
    """
    if not job_ids:
        return {}
    params = {
        "ids": sorted({str(i) for i in job_ids}),
        "worker": worker_id,
        "lease": lease_seconds,
        "cap": cap,
    }
    claimed: dict[uuid.UUID, Claimed] = {}
    for row in session.execute(_CLAIM, params):
        job_id = row.id if isinstance(row.id, uuid.UUID) else uuid.UUID(str(row.id))
        claimed[job_id] = Claimed(
            job_id=job_id,
            task=row.task,
            payload=row.payload,
            attempt=row.attempts,
            max_attempts=row.max_attempts,
            timeout_seconds=row.timeout_seconds,
            trace_id=row.trace_id,
            started_at=row.started,
            lost_previous=row.prev_status == S.RUNNING.value,
            queued_at=row.queued_at,
        )
    return claimed


def claim(
    session: Db, job_id: uuid.UUID, worker_id: str, lease_seconds: float, cap: int
) -> Claimed | None:
    """Claim one job (see claim_many); None if it could not be claimed."""
    return claim_many(session, [job_id], worker_id, lease_seconds, cap).get(job_id)


def view(session: Db, job_id: uuid.UUID) -> JobView | None:
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


# One statement finishes a whole batch; a cancellation request wins over what the attempt
# produced. Rows are locked in id order first so concurrent batches cannot deadlock.
_FINISH = text(
    f"""
    WITH v AS (
        SELECT * FROM unnest(
            CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:results AS text[]),
            CAST(:errors AS text[]), CAST(:attempts AS int[]), CAST(:outcomes AS text[]),
            CAST(:started AS timestamptz[])
        ) AS v(id, status, result, error, attempt, outcome, started)
    ), locked AS (
        SELECT id FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR UPDATE
    ), u AS (
        UPDATE jobs AS j SET
            status = CASE WHEN j.cancel_requested_at IS NULL THEN v.status ELSE 'cancelled' END,
            result = CAST(v.result AS jsonb),
            error = CASE WHEN j.cancel_requested_at IS NULL THEN v.error
                         ELSE coalesce(v.error, 'cancelled while running') END,
            finished_at = CASE WHEN j.cancel_requested_at IS NULL AND v.status = 'retrying'
                               THEN NULL ELSE now() END,
            updated_at = now(), lease_expires_at = NULL
        FROM v
        WHERE {BY_ID} AND j.id = v.id AND j.id IN (SELECT id FROM locked)
          AND (j.status = 'running') IS TRUE AND j.worker_id = :worker
          AND j.attempts = v.attempt
        RETURNING j.id, j.status, v.attempt, v.outcome, v.error, v.started
    ), a AS (
        INSERT INTO job_attempts (job_id, attempt, outcome, error, worker_id, started_at)
        SELECT id, attempt, CASE WHEN status = 'cancelled' THEN 'cancelled' ELSE outcome END,
               error, :worker, started
        FROM u
    )
    SELECT id, status FROM u
    """
)


@dataclass(frozen=True)
class Finish:
    """How one claimed attempt ended, to be written by finish_many."""

    claimed: Claimed
    status: JobStatus
    outcome: str
    result: Any = None
    error: str | None = None


def finish_many(session: Db, worker_id: str, items: list[Finish]) -> dict[uuid.UUID, JobStatus]:
    """running -> succeeded|retrying|failed (cancelled if requested) for a batch of attempts.

    Returns job id -> status written; a job missing from the result is no longer this
    worker's (its lease expired and another worker took it).
    """
    for item in items:
        if S.RUNNING not in sources(item.status):
            raise ValueError(f"running -> {item.status} is not a transition")
    if not items:
        return {}
    params = {
        "ids": [str(i.claimed.job_id) for i in items],
        "statuses": [i.status.value for i in items],
        "results": [None if i.result is None else json.dumps(i.result) for i in items],
        "errors": [i.error for i in items],
        "attempts": [i.claimed.attempt for i in items],
        "outcomes": [i.outcome for i in items],
        "started": [i.claimed.started_at for i in items],
        "worker": worker_id,
    }
    rows = session.execute(_FINISH, params)
    return {
        (r.id if isinstance(r.id, uuid.UUID) else uuid.UUID(str(r.id))): S(r.status) for r in rows
    }


def finish(
    session: Db,
    claimed: Claimed,
    worker_id: str,
    *,
    status: JobStatus,
    outcome: str,
    result: Any = None,
    error: str | None = None,
) -> JobStatus | None:
    """One attempt's finish (see finish_many); None if the job is no longer ours."""
    written = finish_many(session, worker_id, [Finish(claimed, status, outcome, result, error)])
    return written.get(claimed.job_id)


_EXTEND_LEASES = text(
    """UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease)
       WHERE id IN (SELECT id FROM jobs WHERE id IN :ids ORDER BY id FOR UPDATE)
         AND (status = 'running') IS TRUE AND worker_id = :worker
       RETURNING id, cancel_requested_at IS NOT NULL"""
).bindparams(bindparam("ids", expanding=True))


def extend_leases(
    session: Db, worker_id: str, job_ids: list[uuid.UUID], lease_seconds: float
) -> dict[uuid.UUID, bool]:
    """Heartbeat: push this worker's leases; return held job id -> cancellation requested."""
    if not job_ids:
        return {}
    params = {"ids": job_ids, "worker": worker_id, "lease": lease_seconds}
    return {r[0]: bool(r[1]) for r in session.execute(_EXTEND_LEASES, params)}


def fail_exhausted(session: Db, job_id: uuid.UUID, reason: str, dead_letter: bool) -> bool:
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


def mark_dead_lettered(session: Db, job_id: uuid.UUID) -> None:
    """Note on an already-failed job that its message reached the dead-letter queue."""
    session.execute(
        text(
            """UPDATE jobs SET dead_lettered_at = now(), updated_at = now()
               WHERE id = :id AND status = 'failed' AND dead_lettered_at IS NULL"""
        ),
        {"id": job_id},
    )
