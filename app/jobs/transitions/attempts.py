"""Transitions of a delivery and its attempt: claim, finish, lease renewal, dead-lettering."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, text

from app.jobs.states import (
    FINAL,
    JobStatus,
    sources,
)
from app.jobs.transitions.guards import BY_ID, Db, S, _from, _in
from app.jobs.transitions.workflow import Ready, settle_children


@dataclass(frozen=True)
class Claimed:
    """A job this worker now runs, as run number `attempt`."""

    job_id: uuid.UUID
    task: str
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    timeout_seconds: float | None
    trace_id: str | None
    started_at: datetime
    lost_previous: bool  # the previous run's worker died holding the job
    queued_at: datetime | None = None  # when it became due (for the queue-wait metric)
    failures: int = 0  # failed runs so far (max_attempts limits these)
    series: int = 1
    priority: str = "default"
    parents: list[dict[str, Any]] | None = None  # a workflow job's parents' outcomes
    queue: str = "default"
    in_workflow: bool = False  # finishing it may queue children (a second statement)


_CLAIM = text(
    f"""
    WITH prev AS (
        -- Lock in id order so two claimers of overlapping batches cannot deadlock.
        SELECT id, status, worker_id, greatest(updated_at, run_at) AS queued_at
        FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR UPDATE
    ), u AS (
        UPDATE jobs AS j SET
            status = 'running', attempts = j.attempts + 1,
            crashes = j.crashes + CAST(prev.status = 'running' AS int), worker_id = :worker,
            lease_expires_at = now() + make_interval(secs => :lease),
            started_at = coalesce(j.started_at, now()), updated_at = now(),
            published_at = coalesce(j.published_at, now()),
            progress = NULL, progress_message = NULL, progress_at = NULL
        FROM prev
        WHERE {BY_ID} AND j.id = prev.id AND j.failures < j.max_attempts
          AND j.crashes + CAST(prev.status = 'running' AS int) < :max_crashes
          AND (j.status IN {_in(S.RUNNING)}) IS TRUE
          -- A previous holder's lease must be over by the margin it gives itself to stop.
          AND (j.status <> 'running' OR j.lease_expires_at + make_interval(secs => :margin)
                                        < now())
          AND (j.run_at IS NULL OR j.run_at <= now() + interval '1 second')
        RETURNING j.id, j.task, j.payload, j.attempts, j.failures, j.max_attempts, j.series,
                  j.priority, j.queue, j.timeout_seconds, j.trace_id, j.parent_results,
                  j.workflow_id IS NOT NULL AS in_workflow, now() AS started,
                  prev.status AS prev_status, prev.worker_id AS prev_worker, prev.queued_at
    ), lost AS (
        -- The previous run's worker died holding the job: record that run as lost.
        INSERT INTO job_attempts (job_id, attempt, series, outcome, error, worker_id)
        SELECT id, attempts - 1, series, 'lost',
               'worker stopped heartbeating (killed, hung or cut off)', prev_worker
        FROM u WHERE prev_status = 'running'
    )
    SELECT * FROM u
    """
)


def claim_many(
    session: Db,
    job_ids: list[uuid.UUID],
    worker_id: str,
    lease_seconds: float,
    *,
    margin: float = 0.0,
    max_crashes: int = 3,
) -> dict[uuid.UUID, Claimed]:
    """Claim every claimable job of a receive in one statement; job id -> Claimed.

    queued|retrying|running-with-expired-lease -> running, attempts += 1, lease set. Ids not
    in the result could not be claimed (duplicate delivery, finished, not due, crashing).
    """
    if not job_ids:
        return {}
    params = {
        "ids": sorted({str(i) for i in job_ids}),
        "worker": worker_id,
        "lease": lease_seconds,
        "margin": margin,
        "max_crashes": max_crashes,
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
            failures=row.failures,
            series=row.series,
            priority=row.priority,
            parents=row.parent_results,
            queue=row.queue,
            in_workflow=row.in_workflow,
        )
    return claimed


def claim(
    session: Db, job_id: uuid.UUID, worker_id: str, lease_seconds: float, **limits: Any
) -> Claimed | None:
    """Claim one job (see claim_many); None if it could not be claimed."""
    return claim_many(session, [job_id], worker_id, lease_seconds, **limits).get(job_id)


# An attempt's end writes one of these (cancelled when a cancellation was requested).
_FINISHED_FROM = _from([S.RUNNING], S.SUCCEEDED, S.RETRYING, S.FAILED, S.CANCELLED)

# One statement finishes a whole batch; a cancellation request wins over what the run
# produced. Rows are locked in id order first so concurrent batches cannot deadlock. A job
# that runs again gets its run_at and an unconfirmed publish: its next delivery is fresh.
_FINISH = text(
    f"""
    WITH v AS (
        SELECT * FROM unnest(
            CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:results AS text[]),
            CAST(:errors AS text[]), CAST(:tracebacks AS text[]), CAST(:attempts AS int[]),
            CAST(:outcomes AS text[]), CAST(:started AS timestamptz[]),
            CAST(:counts AS int[]), CAST(:delays AS float8[]), CAST(:dead AS boolean[])
        ) AS v(id, status, result, error, traceback, attempt, outcome, started, counts, delay,
               dead)
    ), locked AS (
        SELECT id FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR UPDATE
    ), u AS (
        UPDATE jobs AS j SET
            status = CASE WHEN j.cancel_requested_at IS NULL THEN v.status ELSE 'cancelled' END,
            result = CAST(v.result AS jsonb),
            error = CASE WHEN j.cancel_requested_at IS NULL THEN v.error
                         ELSE coalesce(v.error, 'cancelled while running') END,
            failures = j.failures + v.counts,
            finished_at = CASE WHEN j.cancel_requested_at IS NULL AND v.status = 'retrying'
                               THEN NULL ELSE now() END,
            run_at = CASE WHEN j.cancel_requested_at IS NULL AND v.status = 'retrying'
                          THEN now() + make_interval(secs => v.delay) ELSE j.run_at END,
            published_at = CASE WHEN j.cancel_requested_at IS NULL AND v.status = 'retrying'
                                THEN NULL ELSE j.published_at END,
            dead_lettered_at = CASE WHEN j.cancel_requested_at IS NULL AND v.dead
                                    THEN now() ELSE j.dead_lettered_at END,
            updated_at = now(), lease_expires_at = NULL
        FROM v
        WHERE {BY_ID} AND j.id = v.id AND j.id IN (SELECT id FROM locked)
          AND (j.status IN {_FINISHED_FROM}) IS TRUE AND j.worker_id = :worker
          AND j.attempts = v.attempt
        RETURNING j.id, j.status, j.series, j.run_at, v.attempt, v.outcome, v.error,
                  v.traceback, v.started, j.workflow_id IS NOT NULL AS in_workflow
    ), a AS (
        INSERT INTO job_attempts
            (job_id, attempt, series, outcome, error, traceback, worker_id, started_at)
        SELECT id, attempt, series,
               CASE WHEN status = 'cancelled' THEN 'cancelled' ELSE outcome END,
               error, traceback, :worker, started
        FROM u
    )
    SELECT id, status, in_workflow FROM u
    """
)


@dataclass(frozen=True)
class Finish:
    """How one claimed run ended, to be written by finish_many."""

    claimed: Claimed
    status: JobStatus
    outcome: str
    result: str | None = None  # JSON text, already encoded and checked
    error: str | None = None
    traceback: str | None = None
    counts: bool = False  # one more failure towards max_attempts
    delay: float = 0.0  # retrying: seconds until the next run
    dead_letter: bool = False


def finish_many(
    session: Db, worker_id: str, items: list[Finish], *, released: list[Ready] | None = None
) -> dict[uuid.UUID, JobStatus]:
    """running -> succeeded|retrying|failed (cancelled if requested) for a batch of runs.

    Returns job id -> status written; a job missing from the result is no longer this
    worker's (its lease expired and another worker took it). Workflow children whose last
    parent this finished are queued in the same transaction and added to `released` (the
    caller sends them after commit).
    """
    for item in items:
        if S.RUNNING not in sources(item.status):
            raise ValueError(f"running -> {item.status} is not a transition")
    if not items:
        return {}
    params = {
        "ids": [str(i.claimed.job_id) for i in items],
        "statuses": [i.status.value for i in items],
        "results": [i.result for i in items],
        "errors": [i.error for i in items],
        "tracebacks": [i.traceback for i in items],
        "attempts": [i.claimed.attempt for i in items],
        "outcomes": [i.outcome for i in items],
        "started": [i.claimed.started_at for i in items],
        "counts": [int(i.counts) for i in items],
        "delays": [float(i.delay) for i in items],
        "dead": [i.dead_letter for i in items],
        "worker": worker_id,
    }
    written: dict[uuid.UUID, JobStatus] = {}
    parents: list[uuid.UUID] = []
    for r in session.execute(_FINISH, params):
        job_id = r.id if isinstance(r.id, uuid.UUID) else uuid.UUID(str(r.id))
        written[job_id] = S(r.status)
        if r.in_workflow and S(r.status) in FINAL:
            parents.append(job_id)
    if parents:
        ready = settle_children(session, parents)
        if released is not None:
            released.extend(ready)
    return written


def finish(session: Db, claimed: Claimed, worker_id: str, **how: Any) -> JobStatus | None:
    """One run's finish (see finish_many and Finish); None if the job is no longer ours."""
    written = finish_many(session, worker_id, [Finish(claimed, **how)])
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


def fail_dead_lettered(session: Db, job_id: uuid.UUID, reason: str) -> bool:
    """A job jobq gives up on (it crashed its worker too often, or kept reaching the DLQ
    without running) ends failed and dead-lettered, with the reason."""
    stmt = text(
        f"""UPDATE jobs SET status = 'failed',
               error = CASE WHEN error IS NULL THEN :reason
                            ELSE :reason || '; last error: ' || error END,
               finished_at = now(), updated_at = now(), lease_expires_at = NULL,
               dead_lettered_at = now()
           WHERE id = :id AND status IN {_in(S.FAILED)}
             AND (status <> 'running' OR lease_expires_at < now())
           RETURNING id"""
    )
    return session.execute(stmt, {"id": job_id, "reason": reason}).first() is not None


def count_redelivery(session: Db, job_id: uuid.UUID) -> None:
    """Note that the DLQ consumer sent an unfinished job back to its queue (no status write)."""
    session.execute(
        text("UPDATE jobs SET redeliveries = redeliveries + 1 WHERE id = :id"), {"id": job_id}
    )
