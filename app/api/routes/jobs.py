"""HTTP routes for jobs: parse, call the service, return a schema."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from pydantic import BaseModel

from app.jobs.schemas import (
    MAX_LIST_LIMIT,
    AttemptOut,
    BatchItemResult,
    BatchResult,
    ErrorBody,
    ErrorDetail,
    JobBatchCreate,
    JobCreate,
    JobList,
    JobOut,
    RedriveRequest,
    RedriveResult,
)
from app.jobs.service import MAX_WAIT_SECONDS, JobService
from app.jobs.states import JobStatus
from app.jobs.validation import SafeStr, UtcDatetime
from app.observability.trace import current_trace_id

router = APIRouter(tags=["jobs"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 409, 413, 422, 503)
}
IdempotencyKey = Annotated[SafeStr | None, Header(alias="Idempotency-Key", max_length=255)]


def _service(request: Request) -> JobService:
    return request.app.state.jobs  # type: ignore[no-any-return]


def _json(model: BaseModel, status_code: int) -> Response:
    """A model already validated by construction, serialised once (pydantic-core); FastAPI's
    response_model (kept for the OpenAPI schema) would validate it again, in a worker thread
    for sync routes."""
    return Response(model.model_dump_json(), status_code, media_type="application/json")


@router.post(
    "/jobs",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    responses={**_ERRORS, 200: {"model": JobOut, "description": "idempotent replay"}},
)
async def submit_job(
    body: JobCreate, request: Request, idempotency_key: IdempotencyKey = None
) -> Response:
    """Submit a job; it is durable once this returns 201 (200: the original of a replayed key)."""
    job, created = await _service(request).submit_async(
        body, trace_id=current_trace_id(request.headers), header_key=idempotency_key
    )
    return _json(job, status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@router.post("/jobs/batch", response_model=BatchResult, responses=_ERRORS)
def submit_batch(body: JobBatchCreate, request: Request) -> Response:
    """Submit many jobs in one transaction; invalid items are reported (or reject all if atomic)."""
    results = _service(request).submit_batch(
        body.jobs, atomic=body.atomic, trace_id=current_trace_id(request.headers)
    )
    items: list[BatchItemResult] = []
    for index, (job, created, error) in enumerate(results):
        if error is not None:
            detail = ErrorDetail(code=error.code, message=error.message, field=error.field)
            items.append(BatchItemResult(index=index, status="error", error=detail))
        else:
            kind = "created" if created else "existing"
            items.append(BatchItemResult(index=index, status=kind, job=job))
    result = BatchResult(
        created=sum(i.status == "created" for i in items),
        existing=sum(i.status == "existing" for i in items),
        errors=sum(i.status == "error" for i in items),
        items=items,
    )
    return _json(result, status.HTTP_200_OK)


@router.get("/jobs", response_model=JobList, responses=_ERRORS)
def list_jobs(
    request: Request,
    status: JobStatus | None = None,
    task: Annotated[SafeStr | None, Query(min_length=1, max_length=200)] = None,
    created_after: UtcDatetime | None = None,
    created_before: UtcDatetime | None = None,
    idempotency_key: Annotated[SafeStr | None, Query(min_length=1, max_length=255)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 50,
    cursor: Annotated[SafeStr | None, Query(max_length=512)] = None,
) -> JobList:
    """Jobs newest first, filtered, one page at a time (pass next_cursor back as cursor)."""
    items, next_cursor = _service(request).find(
        status=status,
        task=task,
        created_after=created_after,
        created_before=created_before,
        idempotency_key=idempotency_key,
        limit=limit,
        cursor=cursor,
    )
    return JobList(items=[JobOut.model_validate(j) for j in items], next_cursor=next_cursor)


WaitSeconds = Annotated[
    float | None,
    Query(
        gt=0,
        le=MAX_WAIT_SECONDS,
        description="long poll: answer as soon as the job is final, or after this many seconds "
        "with the job as it is then",
    ),
]


@router.get("/jobs/{job_id}", response_model=JobOut, responses=_ERRORS)
async def get_job(job_id: uuid.UUID, request: Request, wait: WaitSeconds = None) -> JobOut:
    """One job by id; with `wait`, held until the job succeeds, fails or is cancelled."""
    service = _service(request)
    job = await (service.get_async(job_id) if wait is None else service.wait_final(job_id, wait))
    return JobOut.model_validate(job)


@router.get("/jobs/{job_id}/attempts", response_model=list[AttemptOut], responses=_ERRORS)
def get_attempts(job_id: uuid.UUID, request: Request) -> list[AttemptOut]:
    """Every finished attempt of a job, oldest first, with its error."""
    return [AttemptOut.model_validate(a) for a in _service(request).attempts(job_id)]


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses={**_ERRORS, 202: {"model": JobOut, "description": "cancellation requested"}},
)
def cancel_job(job_id: uuid.UUID, request: Request, response: Response) -> JobOut:
    """Cancel a job not yet running (200), or ask a running one to stop (202); finished: 409."""
    job = _service(request).cancel(job_id)
    if job.status == JobStatus.RUNNING.value:
        response.status_code = status.HTTP_202_ACCEPTED
    return JobOut.model_validate(job)


@router.post("/jobs/{job_id}/retry", response_model=JobOut, responses=_ERRORS)
def retry_job(job_id: uuid.UUID, request: Request) -> JobOut:
    """Run a failed or cancelled job again as a new attempt series; send a queued or
    retrying job again, to run now; other statuses: 409."""
    return JobOut.model_validate(_service(request).retry(job_id))


@router.post("/dlq/redrive", response_model=RedriveResult, responses=_ERRORS, tags=["dlq"])
def redrive(body: RedriveRequest, request: Request) -> RedriveResult:
    """Re-enqueue failed jobs in bulk by task and time window; reports how many."""
    jobs = _service(request).redrive(body)
    return RedriveResult(redriven=len(jobs), job_ids=[j.id for j in jobs])
