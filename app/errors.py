"""One exception root for jobq; adapters translate library errors into these."""

from __future__ import annotations

from typing import Any


class JobqError(Exception):
    """Root of every error jobq raises on purpose."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details


class InvalidInput(JobqError):
    """The request is well-formed but a field's value is not acceptable."""

    status_code = 422
    code = "invalid_input"


class PayloadTooLarge(JobqError):
    """The request body exceeds the configured limit."""

    status_code = 413
    code = "payload_too_large"


class NotFound(JobqError):
    """The named resource does not exist."""

    status_code = 404
    code = "not_found"


class Conflict(JobqError):
    """The request conflicts with the resource's current state."""

    status_code = 409
    code = "conflict"


class Forbidden(JobqError):
    """The caller may not do this (a read-only key, a cross-site form)."""

    status_code = 403
    code = "forbidden"


class DependencyUnavailable(JobqError):
    """PostgreSQL or SQS cannot be reached; the caller may retry."""

    status_code = 503
    code = "unavailable"


class DatabaseUnavailable(DependencyUnavailable):
    """PostgreSQL is unreachable or failed with a transient error."""

    code = "database_unavailable"


class QueueUnavailable(DependencyUnavailable):
    """SQS is unreachable or refused the call."""

    code = "queue_unavailable"


class TaskError(JobqError):
    """Raised by a task handler; `retryable` decides whether another attempt is made."""

    retryable = True


class RetryableError(TaskError):
    """A failure worth retrying (the default for any exception a handler raises)."""


class PermanentError(TaskError):
    """A failure no retry can fix: the job fails at once."""

    retryable = False


class TaskTimeout(RetryableError):
    """The handler ran past its timeout."""


class Retry(RetryableError):
    """A failure that asks for the next attempt in `in_seconds` instead of the backoff."""

    def __init__(self, in_seconds: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.in_seconds = in_seconds


class Snooze(TaskError):
    """Not a failure: run this job again in `seconds`, without using an attempt."""

    def __init__(self, seconds: float, reason: str = "snoozed") -> None:
        super().__init__(reason)
        self.seconds = seconds
