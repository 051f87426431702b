"""Building a job's row from a request: the validation every submit path shares (the API's
routes, the batch endpoint, jobq.enqueue)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from app.catalogue.cache import Catalogue, Load
from app.config import Settings
from app.errors import InvalidInput
from app.jobs.schemas import JobCreate
from app.jobs.states import JobStatus
from app.jobs.validation import check_payload
from app.sqs.limits import MAX_DELAY_SECONDS

Row = dict[str, Any]


def request_hash(req: JobCreate) -> str:
    """A fingerprint of what was asked, to tell an idempotent replay from a conflicting reuse."""
    canonical = req.model_dump(mode="json", exclude={"idempotency_key"})
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def build_row(
    catalogue: Catalogue,
    settings: Settings,
    req: JobCreate,
    *,
    trace_id: str | None,
    key: str | None,
    load: Load | None = None,
) -> Row:
    """Validate one request against the task catalogue and build its job row (InvalidInput
    naming the field); shared by the API and jobq.enqueue (`load`: read the catalogue through
    the caller's connection)."""
    view = catalogue.get(req.task, load)
    check_payload(req.payload, max_depth=settings.max_payload_depth)
    task = catalogue.check(view, req.payload).newest
    ceiling = settings.max_attempts_ceiling
    if req.max_attempts is not None and req.max_attempts > ceiling:
        raise InvalidInput(
            f"max_attempts may not exceed {ceiling} (JOBQ_MAX_ATTEMPTS_CEILING)",
            field="max_attempts",
        )
    if req.delay_seconds is not None and req.run_at is not None:
        raise InvalidInput("give delay_seconds or run_at, not both", field="run_at")
    now = datetime.now(UTC)
    run_at = req.run_at
    if req.delay_seconds:
        run_at = now + timedelta(seconds=req.delay_seconds)
    far = run_at is not None and (run_at - now).total_seconds() > MAX_DELAY_SECONDS
    row: Row = {
        "id": uuid.uuid4(),
        "task": req.task,
        # Beyond SQS's 15-minute delay the job waits in PostgreSQL until the dispatcher
        # publishes it.
        "status": (JobStatus.SCHEDULED if far else JobStatus.QUEUED).value,
        "payload": req.payload,
        "max_attempts": req.max_attempts or task.max_attempts or settings.max_attempts,
        "timeout_seconds": req.timeout_seconds or task.timeout_seconds,
        "trace_id": trace_id,
        "priority": req.priority or task.priority or "default",
        "run_at": run_at if run_at is not None and run_at > now else None,
    }
    if key is not None:
        row.update(
            idempotency_key=key,
            request_hash=request_hash(req),
            idempotency_expires_at=now + timedelta(seconds=settings.idempotency_ttl),
        )
    return row
