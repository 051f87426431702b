"""HTTP routes for workflows: jobs linked by depends_on (docs/flow-control.md)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request

from app.jobs.schemas import ErrorBody
from app.jobs.service import JobService
from app.jobs.workflows import WorkflowOut

router = APIRouter(tags=["workflows"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (404, 503)}


def _service(request: Request) -> JobService:
    return request.app.state.jobs  # type: ignore[no-any-return]


@router.get("/workflows/{workflow_id}", response_model=WorkflowOut, responses=_ERRORS)
def get_workflow(workflow_id: uuid.UUID, request: Request) -> WorkflowOut:
    """A workflow's jobs (oldest first), its edges, counts by status and overall status."""
    return _service(request).workflow(workflow_id)


@router.post("/workflows/{workflow_id}/cancel", response_model=WorkflowOut, responses=_ERRORS)
def cancel_workflow(workflow_id: uuid.UUID, request: Request) -> WorkflowOut:
    """Cancel every unfinished job of the workflow; running ones are asked to stop."""
    return _service(request).cancel_workflow(workflow_id)
