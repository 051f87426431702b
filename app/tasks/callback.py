"""The built-in `jobq.callback` task: POST a finished job's JSON to its callback_url, signed.

Its jobs are inserted by a trigger when a job with a callback_url reaches a final status
(app/jobs/callbacks.py). It goes out through the `http` task's request code, so the same
egress protection applies (JOBQ_HTTP_ALLOWED_NETWORKS), and 5xx, 408, 429 and network errors
are retried with the default backoff while other 4xx fail at once.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from app.config import get_settings
from app.egress import EgressPolicy
from app.jobs.callbacks import CALLBACK_TASK, SIGNATURE_HEADER, sign
from app.tasks.http import HttpMethod, HttpRequest, call
from jobq import JobContext, PermanentError, task

CALLBACK_TIMEOUT_SECONDS = 30.0


class CallbackPayload(BaseModel):
    """What the trigger stores: where to send, and the finished job as JSON."""

    model_config = ConfigDict(extra="forbid")

    url: str
    job: dict[str, Any]


@task(CALLBACK_TASK, payload_model=CallbackPayload, timeout_seconds=2 * CALLBACK_TIMEOUT_SECONDS)
def deliver(payload: CallbackPayload, ctx: JobContext) -> dict[str, Any]:
    """POST the job JSON with a Jobq-Signature header; the receiver's answer is the result."""
    settings = get_settings()
    if not settings.callback_secret:
        raise PermanentError("JOBQ_CALLBACK_SECRET is not set: callbacks are never sent unsigned")
    body = json.dumps(payload.job, separators=(",", ":"), sort_keys=True)
    request = HttpRequest(
        method=HttpMethod.POST,
        url=payload.url,
        headers={
            "content-type": "application/json",
            SIGNATURE_HEADER: sign(settings.callback_secret, body.encode()),
            "jobq-job-id": str(payload.job.get("id", "")),
            "jobq-delivery": str(ctx.job_id),
        },
        text=body,
        timeout_seconds=CALLBACK_TIMEOUT_SECONDS,
        follow_redirects=False,  # a signed body goes only where it was asked to go
    )
    result = call(request, EgressPolicy(settings.http_allowed_network_list), ctx.cancelled)
    return {"status": result["status"], "url": result["url"]}
