"""/dashboard: the overview, the job search and a job's detail (other pages: ops.py,
actions: actions.py)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from app.api.dashboard import actions, flow, flow_actions, ops
from app.api.dashboard.common import HERE, jobs, page
from app.api.dashboard.search import search_page
from app.db import translate_db_errors
from app.jobs import workflows
from app.jobs.states import CANCELLABLE_NOW, RETRYABLE_BY_USER, RUNNABLE_NOW_BY_USER, JobStatus
from app.observability.stats import snapshot

router = APIRouter(prefix="/dashboard", include_in_schema=False)
ATTEMPTS_SHOWN = 50  # the newest attempts of a job (a job retried for months has many)
DETAIL_CHARS = 64 * 1024  # payload, result, error and each traceback on the detail page
LINKS_SHOWN = 50  # the jobs waiting for this one (a fan-out may have thousands)


@router.get("/static/htmx.min.js")
def htmx() -> FileResponse:
    """htmx, vendored (app/api/dashboard/static, 0BSD licence): no CDN."""
    return FileResponse(
        HERE / "static" / "htmx.min.js",
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=86400"},
    )


@router.get("", response_class=HTMLResponse)
def overview(request: Request) -> HTMLResponse:
    """Counts, throughput charts, queue depths and recent failures with retry buttons."""
    state = request.app.state
    stats = snapshot(
        state.runtime.sessions,
        state.sampler.depths(),
        minutes=15,
        failures=10,
        error_max_chars=min(300, state.runtime.settings.list_field_max_bytes),
    )
    charts = ops.throughput_charts(request)
    views = jobs(request).catalogue.views()
    tasks = [views[name].public() for name in sorted(views)]
    return page(request, "overview.html", stats=stats, charts=charts, tasks=tasks)


@router.get("/jobs", response_class=HTMLResponse)
def job_list(request: Request, cursor: str | None = None) -> HTMLResponse:
    """Search jobs (every filter in the URL), newest first, with bulk actions on the matches."""
    return search_page(request, "jobs.html", cursor=cursor, title="Jobs")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_detail(job_id: uuid.UUID, request: Request) -> HTMLResponse:
    """One job: payload, result, times, progress, the jobs it waits for (and that wait for
    it), and every attempt with its traceback."""
    service = jobs(request)
    job = service.get(job_id, max_chars=DETAIL_CHARS)
    attempts = service.attempts(job_id, newest=ATTEMPTS_SHOWN, traceback_chars=DETAIL_CHARS)
    status = JobStatus(job.status)
    links: dict[str, list[workflows.Link]] = {"parents": [], "children": []}
    if job.workflow_id is not None:  # only workflow jobs have parents or children
        with translate_db_errors(), request.app.state.runtime.sessions() as session:
            links = workflows.links(session, job_id, children=LINKS_SHOWN)
    # Due at run_at (a delay) unless that is a later retry's; else at creation.
    first_run = job.started_at
    due = job.run_at if job.run_at and first_run and job.run_at <= first_run else job.created_at
    return page(
        request,
        "job.html",
        job=job,
        attempts=attempts,
        attempts_shown=ATTEMPTS_SHOWN,
        parents=links["parents"],
        children=links["children"],
        children_shown=LINKS_SHOWN,
        due=due,
        can_retry=status in RETRYABLE_BY_USER | RUNNABLE_NOW_BY_USER,
        can_cancel=status in CANCELLABLE_NOW | {JobStatus.RUNNING},
        can_run_now=status is JobStatus.SCHEDULED,
        refresh=None if status in RETRYABLE_BY_USER | {JobStatus.SUCCEEDED} else 5,
    )


router.include_router(ops.router)
router.include_router(flow.router)
router.include_router(actions.router)
router.include_router(flow_actions.router)
