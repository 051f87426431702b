"""Transitions of workflow children: waiting until their parents settle."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.jobs.states import (
    CANCELLABLE_NOW,
    FINAL,
)
from app.jobs.transitions.guards import Db, S, _from, as_uuid


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
            ready.extend(Ready(as_uuid(r.id), r.trace_id, r.priority, r.queue) for r in queued)
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
        as_uuid(r[0])
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
