"""Workflows: jobs that wait for parent jobs (depends_on), and the whole-workflow view.

A job submitted with `depends_on` is inserted `waiting` with a count of its unfinished
parents; the transaction that finishes its last parent queues it
(transitions.settle_children, called from finish_many and every other final write). A
workflow is the set of jobs sharing a `workflow_id`: the one given on submit, else the first
parent's, else the first parent's own id (the root job's id names the workflow).
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.errors import InvalidInput
from app.jobs import transitions, views
from app.jobs.schemas import JobOut
from app.jobs.states import FINAL, JobStatus

S = JobStatus
# The most jobs GET /workflows/{id} shows.
MAX_WORKFLOW_JOBS = 1000

_LOCK_PARENTS = text(
    """SELECT id, status, workflow_id FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))
       ORDER BY id FOR UPDATE"""
)


def prepare_child(session: Session, row: dict[str, Any], parents: list[uuid.UUID]) -> list[Any]:
    """Lock the parents (until commit: none can finish meanwhile) and fill the child's row:
    status waiting, its workflow and unfinished-parent count. Returns the parents' rows."""
    found = {r.id: r for r in session.execute(_LOCK_PARENTS, {"ids": [str(p) for p in parents]})}
    missing = [str(p) for p in parents if p not in found]
    if missing:
        raise InvalidInput(f"depends_on: no job {missing[0]}", field="depends_on")
    ordered = [found[p] for p in parents]
    first = ordered[0]
    row["workflow_id"] = row.get("workflow_id") or first.workflow_id or first.id
    row["status"] = S.WAITING.value
    row["pending_parents"] = sum(1 for r in ordered if S(r.status) not in FINAL)
    return ordered


def attach_child(
    session: Session, child: dict[str, Any], parents: list[Any]
) -> list[transitions.Ready]:
    """After the child's insert: its edges, the parents' workflow id, and its fate now if
    its parents are already done (queued) or one failed (cancelled, policy cancel)."""
    session.execute(
        text(
            """INSERT INTO job_dependencies (child_id, parent_id, position, settled)
               SELECT :child, p, i, s FROM unnest(CAST(:ps AS uuid[]), CAST(:is AS int[]),
                                                  CAST(:ss AS boolean[])) AS t(p, i, s)"""
        ),
        {
            "child": child["id"],
            "ps": [str(p.id) for p in parents],
            "is": list(range(len(parents))),
            "ss": [S(p.status) in FINAL for p in parents],
        },
    )
    session.execute(
        text(
            """UPDATE jobs SET workflow_id = :wid
               WHERE id = ANY(CAST(:ids AS uuid[])) AND workflow_id IS NULL"""
        ),
        {"wid": child["workflow_id"], "ids": [str(p.id) for p in parents]},
    )
    failed = any(S(p.status) in (S.FAILED, S.CANCELLED) for p in parents)
    if failed and child.get("on_parent_failure", "cancel") == "cancel":
        transitions.cancel_orphan(session, child["id"])
        return []
    if child["pending_parents"] == 0:
        transitions.queue_ready_child(session, child["id"])
        ready = transitions.Ready(
            child["id"], child.get("trace_id"), child["priority"], child["queue"]
        )
        return [ready]
    return []


class Edge(BaseModel):
    """`child_id` waits for `parent_id`."""

    parent_id: uuid.UUID
    child_id: uuid.UUID


class WorkflowOut(BaseModel):
    """A workflow: its jobs (oldest first), their edges, counts by status and overall state."""

    id: uuid.UUID
    status: str
    counts: dict[str, int]
    jobs: list[JobOut]
    edges: list[Edge]


def overall(counts: Counter[str]) -> str:
    """The workflow's state: running while any job is unfinished; then failed if a job
    failed, cancelled if one was cancelled, else succeeded."""
    if any(status not in FINAL for status in counts):
        return "running"
    for outcome in (S.FAILED, S.CANCELLED):
        if counts.get(outcome.value):
            return outcome.value
    return S.SUCCEEDED.value


def view(session: Session, workflow_id: uuid.UUID, caps: views.Caps) -> WorkflowOut | None:
    """The workflow, or None if no job belongs to it."""
    jobs = views.workflow_jobs(session, workflow_id, caps, MAX_WORKFLOW_JOBS)
    if not jobs:
        return None
    edges = session.execute(
        text(
            """SELECT d.parent_id, d.child_id FROM job_dependencies d
               JOIN jobs c ON c.id = d.child_id
               WHERE c.workflow_id = :wid ORDER BY d.child_id, d.position"""
        ),
        {"wid": workflow_id},
    ).all()
    counts = Counter(j.status.value for j in jobs)
    return WorkflowOut(
        id=workflow_id,
        status=overall(counts),
        counts=dict(counts),
        jobs=jobs,
        edges=[Edge(parent_id=e.parent_id, child_id=e.child_id) for e in edges],
    )
