"""HTTP routes for jobs: parse, call the service, return a schema."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status

from app.jobs.schemas import MAX_LIST_LIMIT, AttemptOut, ErrorBody, JobCreate, JobList, JobOut
from app.jobs.service import JobService
from app.jobs.states import JobStatus
from app.tracing import trace_id_from

router = APIRouter(prefix="/jobs", tags=["jobs"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody},
    413: {"model": ErrorBody},
    422: {"model": ErrorBody},
    503: {"model": ErrorBody},
}


def _service(request: Request) -> JobService:
    return request.app.state.jobs  # type: ignore[no-any-return]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobOut, responses=_ERRORS)
def submit_job(body: JobCreate, request: Request) -> JobOut:
    """Submit a job; it is durable once this returns 201."""
    job = _service(request).submit(body, trace_id=trace_id_from(request.headers))
    return JobOut.model_validate(job)


@router.get("", response_model=JobList, responses=_ERRORS)
def list_jobs(
    request: Request,
    status: JobStatus | None = None,
    task: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobList:
    """Jobs newest first, filtered by status and task, one page at a time."""
    items, next_cursor = _service(request).list(
        status=status, task=task, limit=limit, cursor=cursor
    )
    return JobList(items=[JobOut.model_validate(j) for j in items], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut, responses=_ERRORS)
def get_job(job_id: uuid.UUID, request: Request) -> JobOut:
    """One job by id."""
    return JobOut.model_validate(_service(request).get(job_id))


@router.get("/{job_id}/attempts", response_model=list[AttemptOut], responses=_ERRORS)
def get_attempts(job_id: uuid.UUID, request: Request) -> list[AttemptOut]:
    """Every finished attempt of a job, oldest first, with its error."""
    return [AttemptOut.model_validate(a) for a in _service(request).attempts(job_id)]
