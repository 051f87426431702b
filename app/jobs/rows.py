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
from app.jobs.callbacks import CALLBACK_TASK, check_callback_url
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
    if req.task == CALLBACK_TASK:
        # Anyone with a submit key could otherwise make jobq sign a body of their choosing.
        raise InvalidInput(
            f"{CALLBACK_TASK} jobs are created by jobq for callback_url, not submitted",
            field="task",
        )
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
    if req.depends_on and (req.delay_seconds or req.run_at):
        raise InvalidInput(
            "depends_on cannot be combined with run_at or delay_seconds", field="depends_on"
        )
    if req.unique_for_seconds is not None and req.unique_key is None:
        raise InvalidInput("unique_for_seconds needs a unique_key", field="unique_for_seconds")
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
        "queue": _queue(settings, req.queue or task.queue or "default"),
        "callback_url": _callback_url(settings, req.callback_url),
        "run_at": run_at if run_at is not None and run_at > now else None,
    }
    if req.unique_key is not None:
        window = req.unique_for_seconds
        row.update(
            unique_key=req.unique_key,
            unique_until=now + timedelta(seconds=window) if window else None,
        )
    if req.workflow_id is not None or req.depends_on:
        row["workflow_id"] = req.workflow_id
    if req.depends_on:
        # Not a column: taken out before the insert (prepare_child locks them).
        row["_parents"] = list(dict.fromkeys(req.depends_on))
        row["on_parent_failure"] = req.on_parent_failure
    if key is not None:
        row.update(
            idempotency_key=key,
            request_hash=request_hash(req),
            idempotency_expires_at=now + timedelta(seconds=settings.idempotency_ttl),
        )
    return row


def _queue(settings: Settings, queue: str) -> str:
    """The named queue of a new job: asked for, else the task's, else "default"."""
    if queue not in settings.queue_names:
        known = ", ".join(settings.queue_names)
        raise InvalidInput(
            f"unknown queue {queue!r} (known: {known}; JOBQ_QUEUE_URLS names the others)",
            field="queue",
        )
    return queue


def _callback_url(settings: Settings, url: str | None) -> str | None:
    """The checked callback_url; refused while callbacks could not be signed."""
    checked = check_callback_url(url)
    if checked is not None and not settings.callback_secret:
        raise InvalidInput(
            "callback_url needs JOBQ_CALLBACK_SECRET set on the server (callbacks are signed)",
            field="callback_url",
        )
    return checked
