"""Trace context that follows a job from the HTTP request through SQS into the worker.

`trace_id_var` holds the trace id of the work at hand; every log line written while it is set
carries it (see app.observability.logs).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from contextvars import ContextVar

trace_id_var: ContextVar[str | None] = ContextVar("jobq_trace_id", default=None)

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def trace_id_from(headers: Mapping[str, str]) -> str:
    """The W3C traceparent's trace id, else a sane X-Request-ID, else a new id."""
    match = _TRACEPARENT.match(headers.get("traceparent", "").strip().lower())
    if match:
        return match.group(1)
    request_id = headers.get("x-request-id", "").strip()
    if _REQUEST_ID.match(request_id):
        return request_id
    return uuid.uuid4().hex


def current_trace_id(headers: Mapping[str, str]) -> str:
    """The trace id bound to this request by the HTTP middleware (or derived from headers)."""
    return trace_id_var.get() or trace_id_from(headers)
