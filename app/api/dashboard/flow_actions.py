"""The dashboard's flow-control actions: pause, resume and limits of queues and tasks,
enable, disable and run now of schedules, and cancel of a workflow.

Like the job actions (actions.py): every POST passes csrf.check, read-only keys are refused
by the auth middleware (403) and see no buttons, and each change is logged on jobq.audit with
the key's name. The work is the services' (app/jobs/controls.py, app/schedules/service.py,
JobService.cancel_workflow); these routes only read the form and say what happened.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.api.dashboard import csrf
from app.api.dashboard.actions import audit, back
from app.api.dashboard.common import jobs
from app.db import translate_db_errors
from app.errors import InvalidInput, JobqError
from app.jobs import controls
from app.jobs.controls import ControlUpdate
from app.schedules.schemas import ScheduleUpdate
from app.schedules.service import ScheduleService

router = APIRouter()
_CONTROL_OPS = ("pause", "resume", "limits")
_SCHEDULE_OPS = {"enable": "enabled", "disable": "disabled", "run": "submitted a job now"}


def _limits(fields: dict[str, str]) -> ControlUpdate:
    """The limits form: a blank field clears the run-time limit (the declared one applies)."""
    conc = fields.get("max_concurrency", "").strip()
    rate = fields.get("rate_limit", "").strip()
    if conc and not conc.isdigit():
        raise InvalidInput("max_concurrency must be a whole number", field="max_concurrency")
    return ControlUpdate(max_concurrency=int(conc) if conc else None, rate_limit=rate or None)


def _problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "form"
        return f"{where}: {first['msg']}"
    if isinstance(exc, JobqError):
        return f"{exc.field}: {exc.message}" if exc.field else exc.message
    raise exc


@router.post("/controls", dependencies=[Depends(csrf.check)])
async def change_controls(request: Request) -> Response:
    """Pause, resume or set the limits of a queue or a task (fields scope, name, op)."""
    fields = await csrf.form(request)
    scope, name, op = fields.get("scope", ""), fields.get("name", ""), fields.get("op", "")
    if scope not in ("queue", "task"):
        raise InvalidInput("scope must be queue or task", field="scope")
    if op not in _CONTROL_OPS:
        raise InvalidInput("op must be pause, resume or limits", field="op")
    fallback = str(request.url_for("queues"))

    def run() -> controls.ControlOut:
        change = _limits(fields) if op == "limits" else ControlUpdate(paused=op == "pause")
        with translate_db_errors(), request.app.state.runtime.sessions.begin() as session:
            return controls.update(session, scope, name, change)  # type: ignore[arg-type]

    try:
        done = await run_in_threadpool(run)
    except (ValidationError, JobqError) as exc:
        return back(request, fallback, fields, f"{op} of {scope} {name} refused: {_problem(exc)}")
    extra: dict[str, Any] = {scope: name}
    if op == "limits":
        extra.update(max_concurrency=done.max_concurrency, rate_limit=done.rate_limit)
        msg = (
            f"task {name}: max concurrency {done.effective_max_concurrency or 'none'}, "
            f"rate limit {done.effective_rate_limit or 'none'}"
        )
    else:
        msg = f"{scope} {name} {'paused' if done.paused else 'resumed'}"
    audit(request, op, f"{scope} {name}", **extra)
    return back(request, fallback, fields, msg)


def _schedules(request: Request) -> ScheduleService:
    return request.app.state.schedules  # type: ignore[no-any-return]


@router.post("/schedules/{schedule_id}/{op}", dependencies=[Depends(csrf.check)])
async def schedule_action(schedule_id: uuid.UUID, op: str, request: Request) -> Response:
    """Enable, disable or run a schedule now."""
    if op not in _SCHEDULE_OPS:
        raise InvalidInput("op must be enable, disable or run", field="op")
    service = _schedules(request)
    ref = str(schedule_id)
    fields = await csrf.form(request)
    fallback = str(request.url_for("schedule_list"))
    extra: dict[str, Any] = {"schedule_id": ref}
    try:
        if op == "run":
            job_id = await run_in_threadpool(service.run_now, ref)
            extra["job_id"] = str(job_id)
        else:
            change = ScheduleUpdate(enabled=op == "enable")
            await run_in_threadpool(service.update, ref, change)
    except JobqError as exc:
        return back(request, fallback, fields, f"{op} refused: {_problem(exc)}")
    audit(request, f"schedule {op}", f"schedule {ref}", **extra)
    return back(request, fallback, fields, f"schedule {_SCHEDULE_OPS[op]}")


@router.post("/workflows/{workflow_id}/cancel", dependencies=[Depends(csrf.check)])
async def workflow_cancel(workflow_id: uuid.UUID, request: Request) -> Response:
    """Cancel every unfinished job of a workflow (running ones are asked to stop)."""
    fields = await csrf.form(request)
    fallback = str(request.url_for("workflow_detail", workflow_id=workflow_id))
    try:
        done = await run_in_threadpool(jobs(request).cancel_workflow, workflow_id)
    except JobqError as exc:
        return back(request, fallback, fields, f"cancel refused: {_problem(exc)}")
    audit(request, "cancel", f"workflow {workflow_id}", workflow_id=str(workflow_id))
    return back(request, fallback, fields, f"workflow cancel requested: now {done.status}")
