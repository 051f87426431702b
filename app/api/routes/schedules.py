"""HTTP routes for cron and interval schedules (docs/flow-control.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response, status

from app.jobs.schemas import ErrorBody
from app.jobs.validation import SafeStr
from app.schedules.schemas import (
    ScheduleCreate,
    ScheduleList,
    ScheduleOut,
    ScheduleRun,
    ScheduleUpdate,
)
from app.schedules.service import ScheduleService

router = APIRouter(tags=["schedules"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 409, 422, 503)
}
Ref = Annotated[
    SafeStr, Path(min_length=1, max_length=200, description="the schedule's name or id")
]


def _service(request: Request) -> ScheduleService:
    return request.app.state.schedules  # type: ignore[no-any-return]


@router.post(
    "/schedules",
    status_code=status.HTTP_201_CREATED,
    response_model=ScheduleOut,
    responses=_ERRORS,
)
def create_schedule(body: ScheduleCreate, request: Request) -> ScheduleOut:
    """Create a schedule (409 if the name is taken); its next run is in `next_run_at`."""
    return _service(request).create(body)


@router.get("/schedules", response_model=ScheduleList, responses=_ERRORS)
def list_schedules(request: Request) -> ScheduleList:
    """Every schedule (declared in code or through this API), by name."""
    return ScheduleList(items=_service(request).all())


@router.get("/schedules/{ref}", response_model=ScheduleOut, responses=_ERRORS)
def get_schedule(ref: Ref, request: Request) -> ScheduleOut:
    """One schedule by name or id, with its next and last run."""
    return _service(request).get(ref)


@router.patch("/schedules/{ref}", response_model=ScheduleOut, responses=_ERRORS)
def update_schedule(ref: Ref, body: ScheduleUpdate, request: Request) -> ScheduleOut:
    """Change a schedule: enable/disable it, change its rule, task, payload or priority."""
    return _service(request).update(ref, body)


@router.post("/schedules/{ref}/run", response_model=ScheduleRun, responses=_ERRORS)
def run_schedule(ref: Ref, request: Request) -> ScheduleRun:
    """Submit the schedule's job now, outside its rule; its next regular run does not move."""
    return ScheduleRun(job_id=_service(request).run_now(ref))


@router.delete("/schedules/{ref}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
def delete_schedule(ref: Ref, request: Request) -> Response:
    """Delete a schedule; the jobs it submitted stay. A code schedule returns at next start."""
    _service(request).delete(ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
