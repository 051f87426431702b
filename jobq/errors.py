"""The client's exceptions: the API's error JSON as typed errors, all under `ApiError`.

These are what `jobq.Client` and `jobq.AsyncClient` raise. They are a hierarchy of their own,
apart from the errors task handlers raise (`jobq.PermanentError`, ...) and from the service's
internal ones: catching `jobq.NotFound` never catches anything but an API's 404.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobq.models import Job


class ApiError(Exception):
    """Root of every error the client raises.

    `status` is the HTTP status (None when no response arrived), `code` and `message` come from
    the API's `{"error": {"code", "message", "field"}}` body, `field` names the input at fault,
    and `body` is the whole decoded body (None if it was not JSON).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        field: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field
        self.body = body

    def __str__(self) -> str:
        prefix = f"{self.status} {self.code}: " if self.status is not None else ""
        return prefix + self.message


class InvalidInput(ApiError):
    """400, 413 or 422: the request was refused as given; `field` names what to fix."""


class Unauthorized(ApiError):
    """401: no API key, or not a valid one."""


class Forbidden(Unauthorized):
    """403: the key is valid but may not do this (a read-only key submitting)."""


class NotFound(ApiError):
    """404: no such job (or path)."""


class Conflict(ApiError):
    """409: not possible in the job's current state, or an idempotency key reused differently."""


class _RetryAfter(ApiError):
    """An error that says how long to wait before trying again."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class RateLimited(_RetryAfter):
    """429: over the submit rate limit; `retry_after` is the seconds the API asked to wait."""


class Unavailable(_RetryAfter):
    """502, 503 or 504, or no answer at all: the service (or PostgreSQL or SQS behind it)
    cannot serve now; `retry_after` as the API asked (None if it did not say)."""


class Unreachable(Unavailable):
    """No response: the connection was refused, dropped or timed out."""


class WaitTimeout(ApiError, TimeoutError):
    """wait() ran out of time before the job reached a final status; `job` is as last seen."""

    def __init__(self, message: str, *, job: Job) -> None:
        super().__init__(message, code="wait_timeout")
        self.job = job


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidInput,
    422: InvalidInput,
    429: RateLimited,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, math.ceil(seconds))


def error_from_response(status: int, headers: Mapping[str, str], body: Any) -> ApiError:
    """The typed error for an error response (`body`: decoded JSON, or None)."""
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        detail = {}
    kind = _BY_STATUS.get(status, ApiError)
    message = str(detail.get("message") or f"HTTP {status}")
    kw: dict[str, Any] = {
        "status": status,
        "code": str(detail.get("code") or "http_error"),
        "field": detail.get("field"),
        "body": body,
    }
    if issubclass(kind, _RetryAfter):
        kw["retry_after"] = retry_after(headers)
    return kind(message, **kw)
