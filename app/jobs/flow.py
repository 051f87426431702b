"""Flow control at claim time: paused tasks and queues, concurrency and rate limits.

A worker's claim runs `admit` first, in the same transaction: it reads the batch's tasks and
queues with their controls, locks the control rows of the rate- or concurrency-limited tasks
(in name order, so claimers cannot deadlock), counts those tasks' running jobs with live
leases *after* taking the lock (under READ COMMITTED each statement sees what committed
before it began, so every claim that held the lock before is counted), and admits at most
what the limits leave. `spend` then takes the claimed jobs' tokens before the commit releases
the lock. The limits therefore hold however many workers claim at once.

Jobs held back are `Deferred`: the worker sends each a fresh, delayed message and deletes the
one it received, so neither an attempt nor SQS's receive count (the crash guard) is used up.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from app.sqs.limits import MAX_DELAY_SECONDS

# Seconds before a held-back job's fresh message comes back (random in [low, high]).
CONCURRENCY_RECHECK = (1.0, 3.0)
RATE_SPREAD_SECONDS = 30.0


@dataclass(frozen=True)
class Deferred:
    """A job held back by flow control, and when to look at it again."""

    job_id: uuid.UUID
    reason: str  # paused | concurrency | rate
    delay: int  # whole seconds (an SQS DelaySeconds)
    trace_id: str | None
    priority: str
    queue: str


@dataclass
class Bucket:
    """A limited task's row, locked for this claim."""

    task: str
    max_concurrency: int | None
    rate_count: int | None
    rate_period: float | None
    available: float  # tokens now (refilled up to the clock of this claim)
    now: datetime
    running: int = 0
    taken: int = 0


@dataclass
class Admission:
    """What `admit` decided: the ids to claim, the jobs held back, the locked buckets."""

    ids: list[uuid.UUID]
    deferred: list[Deferred] = field(default_factory=list)
    buckets: dict[str, Bucket] = field(default_factory=dict)


_BATCH = text(
    """
    SELECT j.id, j.task, j.queue, j.priority, j.trace_id,
           coalesce(t.paused, false) OR coalesce(q.paused, false) AS paused,
           coalesce(t.max_concurrency, t.declared_max_concurrency) IS NOT NULL
             OR coalesce(t.rate_count, t.declared_rate_count) IS NOT NULL AS limited,
           -- Only jobs a claim would take now are held back; the rest go on to the claim,
           -- which leaves them (duplicates, finished, not due) to the usual decisions.
           (j.status IN ('queued', 'retrying')
            OR (j.status = 'running'
                AND j.lease_expires_at + make_interval(secs => :margin) < now()))
           AND (j.run_at IS NULL OR j.run_at <= now() + interval '1 second') AS claimable
    FROM jobs j
    LEFT JOIN flow_controls t ON t.scope = 'task' AND t.name = j.task
    LEFT JOIN flow_controls q ON q.scope = 'queue' AND q.name = j.queue
    WHERE j.id = ANY(CAST(:ids AS uuid[]))
    """
)

_LOCK = text(
    """
    SELECT name, coalesce(max_concurrency, declared_max_concurrency) AS max_concurrency,
           coalesce(rate_count, declared_rate_count) AS rate_count,
           coalesce(rate_period, declared_rate_period) AS rate_period, tokens, refilled_at
    FROM flow_controls WHERE scope = 'task' AND name = ANY(CAST(:tasks AS text[]))
    ORDER BY name FOR UPDATE
    """
)

# A run whose lease ended less than the margin ago may still be stopping: it counts.
_RUNNING = text(
    """
    SELECT clock_timestamp() AS now, t.name AS task,
           (SELECT count(*) FROM jobs j WHERE j.status = 'running' AND j.task = t.name
              AND j.lease_expires_at + make_interval(secs => :margin) >= clock_timestamp())
             AS running
    FROM unnest(CAST(:tasks AS text[])) AS t(name)
    """
)

_SPEND = text(
    """
    UPDATE flow_controls SET tokens = v.tokens, refilled_at = v.at
    FROM unnest(CAST(:tasks AS text[]), CAST(:tokens AS float8[]), CAST(:at AS timestamptz[]))
         AS v(name, tokens, at)
    WHERE scope = 'task' AND flow_controls.name = v.name
    """
)


def _refilled(row: Any, now: datetime) -> float:
    """The bucket's tokens at `now` (full for a bucket never used)."""
    if row.rate_count is None or row.rate_period is None:
        return float("inf")
    if row.tokens is None or row.refilled_at is None:
        return float(row.rate_count)
    elapsed = max(0.0, (now - row.refilled_at).total_seconds())
    return min(float(row.rate_count), row.tokens + elapsed * row.rate_count / row.rate_period)


def _lock_buckets(conn: Connection, tasks: list[str], margin: float) -> dict[str, Bucket]:
    """Lock the limited tasks' rows, then count their running jobs (in that order)."""
    rows = list(conn.execute(_LOCK, {"tasks": tasks}))
    counts = {r.task: r for r in conn.execute(_RUNNING, {"tasks": tasks, "margin": margin})}
    buckets: dict[str, Bucket] = {}
    for row in rows:
        now = counts[row.name].now
        buckets[row.name] = Bucket(
            row.name,
            row.max_concurrency,
            row.rate_count,
            row.rate_period,
            _refilled(row, now),
            now,
            running=int(counts[row.name].running),
        )
    return buckets


def _hold(bucket: Bucket) -> tuple[str, float] | None:
    """Why one more job of this task may not start now, and for how long; None if it may."""
    if (
        bucket.max_concurrency is not None
        and bucket.running + bucket.taken >= bucket.max_concurrency
    ):
        return "concurrency", random.uniform(*CONCURRENCY_RECHECK)
    if bucket.rate_count is not None and bucket.rate_period is not None:
        short = bucket.taken + 1 - bucket.available
        if short > 0:
            wait = short * bucket.rate_period / bucket.rate_count
            # Spread over up to a period (at most 30 s): every held-back job would otherwise
            # come back at the same moment, and a backlog far above the rate would cycle
            # through SQS every second.
            return "rate", wait + random.uniform(0, min(bucket.rate_period, RATE_SPREAD_SECONDS))
    return None


def admit(
    conn: Connection, job_ids: list[uuid.UUID], *, margin: float, pause_recheck: float
) -> Admission:
    """Decide which of a receive's jobs may be claimed now (see the module docstring)."""
    rows = list(conn.execute(_BATCH, {"ids": sorted({str(i) for i in job_ids}), "margin": margin}))
    by_id = {(r.id if isinstance(r.id, uuid.UUID) else uuid.UUID(str(r.id))): r for r in rows}
    limited = sorted({r.task for r in rows if r.claimable and r.limited and not r.paused})
    buckets = _lock_buckets(conn, limited, margin) if limited else {}
    admission = Admission([], buckets=buckets)
    for job_id in job_ids:
        row = by_id.get(job_id)
        hold: tuple[str, float] | None = None
        if row is not None and row.claimable:
            if row.paused:
                hold = ("paused", pause_recheck)
            elif row.task in buckets:
                hold = _hold(buckets[row.task])
                if hold is None:
                    buckets[row.task].taken += 1
        if hold is None or row is None:
            admission.ids.append(job_id)
            continue
        delay = int(min(MAX_DELAY_SECONDS, max(1.0, hold[1] + 0.999)))
        admission.deferred.append(
            Deferred(job_id, hold[0], delay, row.trace_id, row.priority, row.queue)
        )
    return admission


def spend(conn: Connection, admission: Admission, claimed: dict[uuid.UUID, Any]) -> None:
    """Take one token per claimed job of each rate-limited task (before the lock is let go)."""
    used: dict[str, int] = {}
    for job in claimed.values():
        used[job.task] = used.get(job.task, 0) + 1
    rated = [b for b in admission.buckets.values() if b.rate_count is not None]
    if not rated:
        return
    conn.execute(
        _SPEND,
        {
            "tasks": [b.task for b in rated],
            "tokens": [max(0.0, b.available - used.get(b.task, 0)) for b in rated],
            "at": [b.now for b in rated],
        },
    )


_ANY_CONTROL = text(
    """SELECT EXISTS (SELECT 1 FROM flow_controls WHERE paused
              OR coalesce(max_concurrency, declared_max_concurrency) IS NOT NULL
              OR coalesce(rate_count, declared_rate_count) IS NOT NULL)"""
)


class Switch:
    """Whether claims need `admit` at all: re-read at most every `ttl` seconds, so a worker
    where nothing is paused or limited pays one tiny query a second, not one per claim."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._active = False
        self._checked = float("-inf")

    def active(self, conn: Connection) -> bool:
        """True if some task or queue is paused or limited (as of at most `ttl` ago)."""
        now = time.monotonic()
        if now - self._checked >= self.ttl:
            self._active = bool(conn.execute(_ANY_CONTROL).scalar())
            self._checked = now
        return self._active
