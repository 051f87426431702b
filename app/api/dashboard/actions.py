"""The dashboard's actions: retry, cancel and run-now on one job, and bulk retry, cancel
and redrive on every job a search matches (after a confirmation showing the count).

Every POST passes csrf.check (same Origin and a matching token); read-only keys never get
here (the auth middleware answers their POSTs 403) and see no buttons."""

from __future__ import annotations

import logging
import uuid
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from app.api.dashboard import csrf
from app.api.dashboard.common import BULK_LIMIT, actor, jobs, page
from app.errors import InvalidInput, JobqError
from app.jobs.bulk import ACTIONS, scope
from app.jobs.filters import JobFilter

router = APIRouter()
log = logging.getLogger("jobq.audit")
_ONE = {"retry": "retry requested", "cancel": "cancel requested", "run-now": "due now"}


def audit(request: Request, action: str, target: str, **fields: object) -> None:
    """One jobq.audit record of a dashboard action on `target`, naming the caller's key."""
    who = actor(request)
    extra = {"actor": who, "action": action, **fields}
    log.info("dashboard %s of %s by %s", action, target, who, extra=extra)


def back(request: Request, fallback: str, fields: dict[str, str], msg: str) -> Response:
    """POST-redirect-GET to the page the form came from (a dashboard path only)."""
    target = fields.get("next", "")
    if not target.startswith("/dashboard") or target.startswith("//"):
        target = fallback
    sep = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{sep}{urlencode({'msg': msg})}", status_code=303)


@router.post("/jobs/{job_id}/{action}", dependencies=[Depends(csrf.check)])
async def one_job(job_id: uuid.UUID, action: str, request: Request) -> Response:
    """Retry, cancel or run-now one job."""
    if action not in _ONE:
        raise InvalidInput("action must be retry, cancel or run-now", field="action")
    service = jobs(request)
    run = {"retry": service.retry, "cancel": service.cancel, "run-now": service.run_now}[action]
    try:
        await run_in_threadpool(run, job_id)
        msg = _ONE[action]
        audit(request, action, f"job {job_id}", job_id=str(job_id))
    except JobqError as exc:
        msg = f"{action} refused: {exc.message}"
    fallback = str(request.url_for("job_detail", job_id=job_id))
    return back(request, fallback, await csrf.form(request), msg)


@router.get("/bulk", response_class=HTMLResponse)
def confirm(request: Request, action: str) -> HTMLResponse:
    """The confirmation: what the action will do, to how many jobs, and the button."""
    search = JobFilter.parse(request.query_params)
    scoped, statuses = scope(action, search)
    count = jobs(request).count(search, up_to=BULK_LIMIT + 1, action=action)
    return page(
        request,
        "confirm.html",
        action=action,
        search=scoped,
        fields=search.params(),
        applies_to=statuses,
        count=min(count, BULK_LIMIT),
        more=count > BULK_LIMIT,
        refresh=None,
    )


@router.post("/bulk", dependencies=[Depends(csrf.check)])
async def run_bulk(request: Request) -> Response:
    """Do it: every matching job (up to BULK_LIMIT), in batches; audited with the key."""
    fields = await csrf.form(request)
    action = fields.get("action", "")
    if action not in ACTIONS:
        raise InvalidInput("action must be retry, cancel or redrive", field="action")
    search = JobFilter.parse(fields)
    result = await run_in_threadpool(
        lambda: jobs(request).bulk(action, search, actor=actor(request), limit=BULK_LIMIT)
    )
    msg = f"{action}: {result.changed} of {result.matched} matching jobs changed"
    if result.capped:
        msg += f" (stopped at {BULK_LIMIT}: run it again for the rest)"
    fallback = str(request.url_for("job_list")) + search.query()
    return back(request, fallback, fields, msg)
