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
from datetime import datetime
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


class Link(BaseModel):
    """A job another job waits for, or that waits for it (the dashboard's job page)."""

    id: uuid.UUID
    task: str
    status: str
    settled: bool


_PARENTS = text(
    """SELECT p.id, p.task, p.status, d.settled FROM job_dependencies d
       JOIN jobs p ON p.id = d.parent_id WHERE d.child_id = :id ORDER BY d.position"""
)
# A fan-out may have many children: the page shows the first ones (by creation).
_CHILDREN = text(
    """SELECT c.id, c.task, c.status, d.settled FROM job_dependencies d
       JOIN jobs c ON c.id = d.child_id WHERE d.parent_id = :id
       ORDER BY c.created_at, c.id LIMIT :n"""
)


def links(session: Session, job_id: uuid.UUID, *, children: int = 50) -> dict[str, list[Link]]:
    """A job's parents (its depends_on, in order) and its first `children` dependants."""
    found: dict[str, list[Link]] = {}
    for name, stmt, params in (
        ("parents", _PARENTS, {"id": job_id}),
        ("children", _CHILDREN, {"id": job_id, "n": children}),
    ):
        found[name] = [Link(**r._asdict()) for r in session.execute(stmt, params)]
    return found


class WorkflowSummary(BaseModel):
    """One line of the recent-workflows list."""

    id: uuid.UUID
    status: str
    counts: dict[str, int]
    jobs: int
    started: datetime
    last_created: datetime


# The newest workflow jobs, then each of their workflows counted through ix_jobs_workflow:
# the list costs two bounded index scans, however many workflows there are.
_RECENT = text(
    """
    WITH newest AS (
        SELECT workflow_id, created_at FROM jobs WHERE workflow_id IS NOT NULL
        ORDER BY created_at DESC LIMIT :scan),
    ids AS (
        SELECT workflow_id, max(created_at) AS last_created FROM newest
        GROUP BY 1 ORDER BY 2 DESC LIMIT :n)
    SELECT ids.workflow_id AS id, ids.last_created, j.status, count(*) AS n,
           min(j.created_at) AS started
    FROM ids JOIN jobs j ON j.workflow_id = ids.workflow_id
    GROUP BY ids.workflow_id, ids.last_created, j.status
    ORDER BY ids.last_created DESC
    """
)


def recent(session: Session, *, limit: int = 50, scan: int = 5000) -> list[WorkflowSummary]:
    """The workflows with the newest jobs (among the newest `scan` workflow jobs)."""
    rows: dict[uuid.UUID, dict[str, Any]] = {}
    for r in session.execute(_RECENT, {"scan": scan, "n": limit}):
        one = rows.setdefault(r.id, {"counts": Counter(), "started": r.started})
        one["counts"][r.status] += int(r.n)
        one["started"] = min(one["started"], r.started)
        one["last_created"] = r.last_created
    return [
        WorkflowSummary(
            id=wid,
            status=overall(v["counts"]),
            counts=dict(v["counts"]),
            jobs=sum(v["counts"].values()),
            started=v["started"],
            last_created=v["last_created"],
        )
        for wid, v in rows.items()
    ]


def steps(workflow: WorkflowOut) -> dict[uuid.UUID, int]:
    """Each job's step: 0 without parents in the workflow, else one after its latest parent's
    (parents are always older than their children, so one pass oldest first would do; the
    passes repeat only while equal creation times leave a step to raise)."""
    shown = {j.id for j in workflow.jobs}
    parents: dict[uuid.UUID, list[uuid.UUID]] = {}
    for edge in workflow.edges:
        if edge.parent_id in shown:
            parents.setdefault(edge.child_id, []).append(edge.parent_id)
    step = dict.fromkeys(shown, 0)
    for _ in range(len(shown)):  # edges only point from older to newer: no cycles
        changed = False
        for job in workflow.jobs:
            want = max((step[p] + 1 for p in parents.get(job.id, ())), default=0)
            if want != step[job.id]:
                step[job.id], changed = want, True
        if not changed:
            break
    return step
