"""The flow-control pages: recurring schedules, recent workflows and one workflow's jobs
(pause and limits are on the queues page, ops.py; the actions are in flow_actions.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.api.dashboard.common import jobs, page, templates
from app.db import translate_db_errors
from app.jobs import workflows

router = APIRouter()
RECENT_WORKFLOWS = 50


def local_time(value: datetime | None, zone: str) -> str:
    """An instant on the wall clock of a schedule's time zone ("" for none)."""
    if value is None:
        return ""
    try:
        return value.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z")
    except (ValueError, KeyError):  # a zone this machine lacks: the UTC instant is shown too
        return ""


def interval(seconds: int) -> str:
    """An interval schedule's period in its largest whole units ("90 s", "10 min", "2 h")."""
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


templates.env.filters.update(local_time=local_time, interval=interval)


@router.get("/schedules", response_class=HTMLResponse)
def schedule_list(request: Request) -> HTMLResponse:
    """Every schedule: its rule, time zone, enabled, next and last run, and its last job."""
    items = request.app.state.schedules.all()
    return page(request, "schedules.html", schedules=items)


@router.get("/workflows", response_class=HTMLResponse, response_model=None)
def workflow_list(request: Request, id: str = "") -> Response:
    """The workflows with the newest jobs, and a lookup by workflow id."""
    error = None
    if id.strip():
        try:
            wid = uuid.UUID(id.strip())
            return RedirectResponse(str(request.url_for("workflow_detail", workflow_id=wid)), 303)
        except ValueError:
            error = "id: not a workflow id (a UUID)"
    with translate_db_errors(), request.app.state.runtime.sessions() as session:
        items = workflows.recent(session, limit=RECENT_WORKFLOWS)
    return page(
        request, "workflows.html", workflows=items, limit=RECENT_WORKFLOWS, error=error, raw_id=id
    )


@router.get("/workflows/{workflow_id}", response_class=HTMLResponse)
def workflow_detail(workflow_id: uuid.UUID, request: Request) -> HTMLResponse:
    """One workflow: its jobs step by step (a job's step follows its parents'), each with its
    status, progress and the jobs it waits for; cancel while any is unfinished."""
    found = jobs(request).workflow(workflow_id)
    steps = workflows.steps(found)
    parents: dict[uuid.UUID, list[uuid.UUID]] = {}
    for edge in found.edges:
        parents.setdefault(edge.child_id, []).append(edge.parent_id)
    by_step: list[list[Any]] = [[] for _ in range(max(steps.values(), default=0) + 1)]
    for job in found.jobs:
        by_step[steps[job.id]].append(job)
    return page(
        request,
        "workflow.html",
        workflow=found,
        by_step=by_step,
        parents=parents,
        tasks={j.id: j.task for j in found.jobs},
        refresh=None if found.status != "running" else 5,
        capped=len(found.jobs) >= workflows.MAX_WORKFLOW_JOBS,
    )
