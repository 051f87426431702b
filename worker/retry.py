"""Retry policy: pure functions, no I/O, so they are trivially testable."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from app.errors import TaskError
from app.sqs_limits import MAX_VISIBILITY_TIMEOUT


def backoff_seconds(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Delay before attempt `attempt + 1`: exponential, capped, with equal jitter.

    `jitter` is a number in [0, 1] (random in production, fixed in tests). Half of the
    exponential step is kept so retries never bunch up at zero.
    """
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    step = min(cap, base * (2 ** min(attempt - 1, 62)), MAX_VISIBILITY_TIMEOUT)
    jitter = min(max(jitter, 0.0), 1.0)
    return step / 2 + step / 2 * jitter


@dataclass(frozen=True)
class Failure:
    """A classified handler failure."""

    message: str
    retryable: bool
    outcome: str  # "failed" or "timed_out", recorded in the attempt history


def classify(exc: BaseException, *, timed_out: bool = False) -> Failure:
    """Decide whether an exception raised by a handler is worth another attempt."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if timed_out:
        return Failure(text, True, "timed_out")
    if isinstance(exc, TaskError):
        return Failure(str(exc) or text, exc.retryable, "failed")
    if isinstance(exc, ValidationError):
        # A payload that does not fit the task's model will not fit next time either.
        return Failure(text, False, "failed")
    return Failure(text, True, "failed")


def is_final_attempt(attempt: int, max_attempts: int) -> bool:
    """True when no further attempt is allowed after `attempt`."""
    return attempt >= max_attempts
