"""/dashboard: stats, the task catalogue, a filterable job list, job detail with attempts,
retry and cancel."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from app.errors import JobqError
from app.jobs.service import JobService
from app.jobs.states import CANCELLABLE_NOW, RETRYABLE_BY_USER, JobStatus
from app.observability.stats import snapshot

router = APIRouter(prefix="/dashboard", include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.filters["pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
REFRESH_SECONDS = 5


def _jobs(request: Request) -> JobService:
    return request.app.state.jobs  # type: ignore[no-any-return]


def _page(request: Request, name: str, **context: Any) -> HTMLResponse:
    context.setdefault("refresh", REFRESH_SECONDS)
    context["statuses"] = [s.value for s in JobStatus]
    return templates.TemplateResponse(request, name, context)


@router.get("", response_class=HTMLResponse)
def overview(request: Request) -> HTMLResponse:
    """Counts, queue depths, throughput and failed jobs with retry buttons."""
    state = request.app.state
    stats = snapshot(
        state.runtime.sessions,
        state.sampler.depths(),
        minutes=15,
        failures=20,
        error_max_chars=state.runtime.settings.list_field_max_bytes,
    )
    views = _jobs(request).catalogue.views()
    tasks = [views[name].public() for name in sorted(views)]
    message = request.query_params.get("msg")
    return _page(request, "overview.html", stats=stats, tasks=tasks, message=message)


@router.get("/jobs", response_class=HTMLResponse)
def job_list(
    request: Request,
    status: str | None = None,
    task: str | None = None,
    cursor: str | None = None,
) -> HTMLResponse:
    """Newest jobs first, filtered by status and task."""
    chosen = JobStatus(status) if status in {s.value for s in JobStatus} else None
    # Browser input: drop what PostgreSQL could not compare rather than fail the page.
    task = task.replace("\x00", "") if task else None
    items, next_cursor = _jobs(request).find(
        status=chosen, task=task or None, limit=50, cursor=cursor or None
    )
    filters = {k: v for k, v in {"status": status, "task": task}.items() if v}
    next_url = f"?{urlencode({**filters, 'cursor': next_cursor})}" if next_cursor else None
    return _page(request, "jobs.html", jobs=items, filters=filters, next_url=next_url)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_detail(job_id: uuid.UUID, request: Request) -> HTMLResponse:
    """One job, its payload and result, and every attempt with its error."""
    service = _jobs(request)
    job = service.get(job_id)
    return _page(
        request,
        "job.html",
        job=job,
        attempts=service.attempts(job_id),
        can_retry=job.status in {s.value for s in RETRYABLE_BY_USER},
        can_cancel=job.status in {s.value for s in CANCELLABLE_NOW | {JobStatus.RUNNING}},
        message=request.query_params.get("msg"),
    )


@router.post("/jobs/{job_id}/retry")
def retry(job_id: uuid.UUID, request: Request) -> Response:
    """Retry button: re-enqueue, then show the job (POST-redirect-GET)."""
    return _act(request, job_id, "retry")


@router.post("/jobs/{job_id}/cancel")
def cancel(job_id: uuid.UUID, request: Request) -> Response:
    """Cancel button."""
    return _act(request, job_id, "cancel")


def _act(request: Request, job_id: uuid.UUID, action: str) -> Response:
    service = _jobs(request)
    try:
        service.retry(job_id) if action == "retry" else service.cancel(job_id)
        msg = f"{action} requested"
    except JobqError as exc:
        msg = f"{action} refused: {exc.message}"
    url = f"{request.url_for('job_detail', job_id=job_id)}?{urlencode({'msg': msg})}"
    return RedirectResponse(url, status_code=303)
