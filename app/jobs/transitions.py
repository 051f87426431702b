"""Every write of jobs.status: each is one guarded UPDATE ... RETURNING.

Each WHERE clause takes its statuses from the transitions table (app/jobs/states.py) through
`_in` / `_from`. Zero rows back means the transition was not allowed (a duplicate delivery, a
lost lease, a job already finished), so callers never act on a stale view of a job.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, Select, bindparam, select, text, update
from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.jobs.states import (
    CANCELLABLE_NOW,
    FINAL,
    RETRYABLE_BY_USER,
    RUNNABLE_NOW_BY_USER,
    JobStatus,
    sources,
)

S = JobStatus
# Every transition runs on an ORM session or on a Core connection (the worker's hot path).
Db = Session | Connection


# The hot statements find their rows through the primary key only. `(status ...) IS TRUE` is
# not an index condition, so it keeps the planner off ix_jobs_status_created: on statistics
# that predate a fresh backlog it believes few rows are unfinished and would otherwise scan
# every one of them for each batch (10-17 ms instead of 0.5 ms with 5,000 queued jobs,
# measured with EXPLAIN ANALYZE on a freshly loaded backlog).
BY_ID = "j.id = ANY(CAST(:ids AS uuid[]))"


def _allowed(targets: Sequence[JobStatus], wanted: Sequence[JobStatus] | None) -> list[str]:
    """`wanted` (default: every source of targets[0]), each checked against the table."""
    chosen = sorted(wanted if wanted is not None else sources(targets[0]))
    for target in targets:
        bad = [s for s in chosen if s not in sources(target)]
        if bad:
            raise ValueError(f"{bad} -> {target} is not in the transitions table")
    return [s.value for s in chosen]


def _in(target: JobStatus) -> str:
    """SQL list of the statuses `target` may be entered from, from the transitions table."""
    return "(" + ", ".join(f"'{s}'" for s in _allowed([target], None)) + ")"


def _from(wanted: Sequence[JobStatus], *targets: JobStatus) -> str:
    """SQL list of `wanted`, each allowed (by the table) to enter every one of `targets`."""
    return "(" + ", ".join(f"'{s}'" for s in _allowed(targets, wanted)) + ")"


_NOW = text("now()")


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
                  now() AS started,
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


_DUE_FROM = _from([S.SCHEDULED], S.QUEUED)


def scheduled_to_queued(session: Db, job_ids: Sequence[uuid.UUID]) -> None:
    """scheduled -> queued for jobs whose message SQS accepted (the dispatcher)."""
    if job_ids:
        session.execute(
            text(
                f"""UPDATE jobs SET status = 'queued', published_at = now(), updated_at = now()
                    WHERE id = ANY(CAST(:ids AS uuid[])) AND status IN {_DUE_FROM}"""
            ),
            {"ids": [str(i) for i in job_ids]},
        )


def cancel(session: Session, job_id: uuid.UUID) -> Job | None:
    """Not started -> cancelled at once; running -> cancellation requested. None if neither."""
    done = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(_allowed([S.CANCELLED], list(CANCELLABLE_NOW))))
        .values(
            status=S.CANCELLED.value, finished_at=_NOW, updated_at=_NOW, cancel_requested_at=_NOW
        )
        .returning(Job)
    )
    if done is not None:
        return done
    # No status write: the worker's heartbeat sees the request and cancels the handler's
    # context; the attempt's end then writes running -> cancelled.
    return session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status == S.RUNNING.value)
        .values(cancel_requested_at=text("coalesce(cancel_requested_at, now())"), updated_at=_NOW)
        .returning(Job)
        .execution_options(synchronize_session=False)
    )


_CANCEL_NOW = _from(list(CANCELLABLE_NOW), S.CANCELLED)
_CANCEL_MANY = text(
    f"""WITH now_cancelled AS (
            UPDATE jobs SET status = 'cancelled', finished_at = now(), updated_at = now(),
                            cancel_requested_at = now()
            WHERE id = ANY(CAST(:ids AS uuid[])) AND status IN {_CANCEL_NOW}
            RETURNING id
        ), requested AS (
            -- Running: a request the worker's heartbeat passes on (no status write here).
            UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()),
                            updated_at = now()
            WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'running'
            RETURNING id
        )
        SELECT id FROM now_cancelled UNION ALL SELECT id FROM requested"""
)


def cancel_many(session: Session, job_ids: Sequence[uuid.UUID]) -> int:
    """cancel() for many jobs in one statement; how many were cancelled or asked to stop."""
    if not job_ids:
        return 0
    return len(session.execute(_CANCEL_MANY, {"ids": [str(i) for i in job_ids]}).all())


def _requeue_selection(
    ids: list[uuid.UUID] | None,
    task: str | None,
    failed_after: datetime | None,
    failed_before: datetime | None,
    dead_lettered_only: bool,
    limit: int,
) -> Select[Any]:
    wanted = list(RETRYABLE_BY_USER) if ids else [S.FAILED]
    stmt = select(Job.id).where(Job.status.in_(_allowed([S.QUEUED], wanted)))
    if ids:
        stmt = stmt.where(Job.id.in_(ids))
    if task:
        stmt = stmt.where(Job.task == task)
    if failed_after:
        stmt = stmt.where(Job.finished_at >= failed_after)
    if failed_before:
        stmt = stmt.where(Job.finished_at < failed_before)
    if dead_lettered_only:
        stmt = stmt.where(Job.dead_lettered_at.isnot(None))
    return stmt.order_by(Job.finished_at).limit(limit).with_for_update(skip_locked=True)


def requeue(
    session: Session,
    *,
    ids: list[uuid.UUID] | None = None,
    task: str | None = None,
    failed_after: datetime | None = None,
    failed_before: datetime | None = None,
    dead_lettered_only: bool = False,
    limit: int = 1000,
) -> list[Row[Any]]:
    """failed|cancelled -> queued as a fresh attempt series (retry, redrive); history kept.

    Returns (id, status, trace_id, run_at, priority) per job, never whole rows: a redrive of
    thousands of jobs must not load their payloads and results."""
    chosen = _requeue_selection(ids, task, failed_after, failed_before, dead_lettered_only, limit)
    stmt = (
        update(Job)
        .where(Job.id.in_(chosen.scalar_subquery()))
        .values(
            status=S.QUEUED.value,
            attempts=0,
            failures=0,
            crashes=0,
            redeliveries=0,
            series=Job.series + 1,
            result=None,
            error=None,
            started_at=None,
            finished_at=None,
            published_at=None,
            lease_expires_at=None,
            worker_id=None,
            dead_lettered_at=None,
            cancel_requested_at=None,
            run_at=None,
            updated_at=_NOW,
        )
        .returning(Job.id, Job.status, Job.trace_id, Job.run_at, Job.priority, Job.queue)
        .execution_options(synchronize_session=False)
    )
    return list(session.execute(stmt).all())  # type: ignore[arg-type]


# -- workflows: children waiting for their parents --------------------------------------------


@dataclass(frozen=True)
class Ready:
    """A waiting job just queued (its parents are done): send it after commit."""

    id: uuid.UUID
    trace_id: str | None
    priority: str
    queue: str = "default"
    status: str = S.QUEUED.value  # what JobService._publish looks at
    run_at: datetime | None = None


_FINAL_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(FINAL)) + ")"
_CHILD_FROM = _from([S.WAITING], S.QUEUED, S.CANCELLED)

# Each edge is applied once (settled): a retried parent that finishes again changes nothing.
# The child's pending_parents counter lives in its locked row, so two parents finishing at
# once in two transactions each see the other's decrement (a re-check of the locked row),
# and exactly one of them queues the child.
_SETTLE = text(
    f"""
    WITH e AS (
        UPDATE job_dependencies AS d SET settled = true FROM jobs AS p
        WHERE d.parent_id = ANY(CAST(:ids AS uuid[])) AND p.id = d.parent_id
          AND NOT d.settled AND p.status IN {_FINAL_SQL}
        RETURNING d.child_id, p.status <> 'succeeded' AS bad
    ), g AS (
        SELECT child_id, count(*) AS n, bool_or(bad) AS bad FROM e GROUP BY child_id
    ), locked AS (
        SELECT c.id FROM jobs AS c WHERE c.id IN (SELECT child_id FROM g)
        ORDER BY c.id FOR UPDATE
    )
    -- Every decision reads the target row `c`, i.e. its latest version once locked.
    UPDATE jobs AS c SET
        pending_parents = c.pending_parents - g.n,
        status = CASE WHEN g.bad AND c.on_parent_failure = 'cancel' THEN 'cancelled'
                      WHEN c.pending_parents - g.n <= 0 THEN 'queued' ELSE c.status END,
        error = CASE WHEN g.bad AND c.on_parent_failure = 'cancel'
                     THEN 'a parent job failed or was cancelled (on_parent_failure: cancel)'
                     ELSE c.error END,
        finished_at = CASE WHEN g.bad AND c.on_parent_failure = 'cancel' THEN now()
                           ELSE c.finished_at END,
        published_at = NULL, updated_at = now()
    FROM g
    WHERE c.id = g.child_id AND c.id IN (SELECT id FROM locked)
      AND (c.status IN {_CHILD_FROM}) IS TRUE
    RETURNING c.id, c.status, c.trace_id, c.priority, c.queue
    """
)

# A separate statement, after the children's rows are locked: it sees every parent's
# committed result (the statement above reads other parents from its own earlier snapshot).
_PARENT_RESULTS = text(
    """
    UPDATE jobs AS c SET parent_results = (
        SELECT jsonb_agg(jsonb_build_object('id', p.id, 'task', p.task, 'status', p.status,
                                            'result', p.result, 'error', p.error)
                         ORDER BY d.position)
        FROM job_dependencies AS d JOIN jobs AS p ON p.id = d.parent_id
        WHERE d.child_id = c.id)
    WHERE c.id = ANY(CAST(:ids AS uuid[]))
    """
)


def settle_children(session: Db, parent_ids: Sequence[uuid.UUID]) -> list[Ready]:
    """Apply parents that just reached a final status to their waiting children.

    waiting -> queued once no parent is left (with the parents' outcomes copied into
    parent_results); waiting -> cancelled when a parent failed or was cancelled and the
    child's on_parent_failure is cancel, and so on down the workflow. Returns the children
    queued; the caller sends them after commit (the dispatcher re-sends what it does not).
    """
    ready: list[Ready] = []
    ids = [str(i) for i in parent_ids]
    while ids:
        rows = session.execute(_SETTLE, {"ids": ids}).all()
        queued = [r for r in rows if r.status == S.QUEUED.value]
        if queued:
            session.execute(_PARENT_RESULTS, {"ids": [str(r.id) for r in queued]})
            ready.extend(Ready(_uuid(r.id), r.trace_id, r.priority, r.queue) for r in queued)
        # A cancelled child is a final parent too: its own children settle next.
        ids = [str(r.id) for r in rows if r.status == S.CANCELLED.value]
    return ready


def queue_ready_child(session: Db, child_id: uuid.UUID) -> None:
    """waiting -> queued for a child submitted after all its parents were done."""
    session.execute(
        text(
            f"""UPDATE jobs SET status = 'queued', pending_parents = 0, updated_at = now()
                WHERE id = :id AND status IN {_from([S.WAITING], S.QUEUED)}"""
        ),
        {"id": child_id},
    )
    session.execute(_PARENT_RESULTS, {"ids": [str(child_id)]})


def cancel_orphan(session: Db, child_id: uuid.UUID) -> None:
    """waiting -> cancelled for a child submitted after a parent failed (policy cancel)."""
    session.execute(
        text(
            f"""UPDATE jobs SET status = 'cancelled', finished_at = now(), updated_at = now(),
                    error = 'a parent job failed or was cancelled (on_parent_failure: cancel)'
                WHERE id = :id AND status IN {_from([S.WAITING], S.CANCELLED)}"""
        ),
        {"id": child_id},
    )


def cancel_workflow(session: Session, workflow_id: uuid.UUID) -> tuple[list[uuid.UUID], int]:
    """Every not-started job of the workflow -> cancelled; running ones get a cancellation
    request. Returns (ids cancelled now, how many running ones were asked to stop)."""
    now_ids = [
        _uuid(r[0])
        for r in session.execute(
            text(
                f"""UPDATE jobs SET status = 'cancelled', finished_at = now(),
                        updated_at = now(), cancel_requested_at = now()
                    WHERE id IN (SELECT id FROM jobs WHERE workflow_id = :wid
                                 AND status IN {_from(list(CANCELLABLE_NOW), S.CANCELLED)}
                                 ORDER BY id FOR UPDATE)
                    RETURNING id"""
            ),
            {"wid": workflow_id},
        )
    ]
    asked = session.execute(
        text(
            """UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()),
                   updated_at = now()
               WHERE id IN (SELECT id FROM jobs WHERE workflow_id = :wid
                            AND status = 'running' ORDER BY id FOR UPDATE)
               RETURNING id"""
        ),
        {"wid": workflow_id},
    ).all()
    return now_ids, len(asked)


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def run_now(session: Session, job_id: uuid.UUID) -> list[Row[Any]]:
    """queued|retrying -> queued, due now, its send unconfirmed (retry of a waiting job).

    The attempt series and its counts go on; only the wait ends. The caller publishes it
    (and the dispatcher re-sends it if that send is lost), so a job whose message vanished
    runs again; if the message was there after all, the second one is a harmless duplicate.
    Same columns as requeue()."""
    stmt = (
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(_allowed([S.QUEUED], list(RUNNABLE_NOW_BY_USER))),
        )
        .values(status=S.QUEUED.value, run_at=None, published_at=None, updated_at=_NOW)
        .returning(Job.id, Job.status, Job.trace_id, Job.run_at, Job.priority, Job.queue)
        .execution_options(synchronize_session=False)
    )
    return list(session.execute(stmt).all())  # type: ignore[arg-type]
