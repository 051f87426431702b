"""How a handler's run ended, classified: pure functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from app.errors import Retry, Snooze, TaskError
from worker.encode import describe, format_traceback, safe_text

INTERRUPTED = "interrupted: worker shut down before the job finished"


@dataclass(frozen=True)
class Failure:
    """A run that did not succeed, and what it means for the job."""

    message: str
    retryable: bool
    outcome: str  # failed, timed_out, interrupted, crashed or snoozed (the attempt history)
    traceback: str | None = None
    delay: float | None = None  # wait this long before the next run instead of the backoff
    counts: bool = True  # counts towards max_attempts (a snooze or an interruption does not)
    dead_letter: bool = False  # the job crashed its runner: it fails and is dead-lettered


def classify(exc: BaseException, *, max_traceback: int = 16 * 1024) -> Failure:
    """Decide what an exception raised by a handler means."""
    if isinstance(exc, Snooze):
        return Failure(safe_text(str(exc)), True, "snoozed", delay=exc.seconds, counts=False)
    tb = format_traceback(exc, max_bytes=max_traceback)
    if isinstance(exc, Retry):
        return Failure(safe_text(str(exc)), True, "failed", tb, delay=exc.in_seconds)
    if isinstance(exc, TaskError):
        return Failure(safe_text(str(exc)) or describe(exc), exc.retryable, "failed", tb)
    if isinstance(exc, ValidationError):
        # A payload that does not fit the task's model will not fit next time either.
        return Failure(describe(exc), False, "failed", tb)
    return Failure(describe(exc), True, "failed", tb)


def timed_out(limit: float) -> Failure:
    """The handler ran past its timeout."""
    return Failure(f"TaskTimeout: timed out after {limit:g} s", True, "timed_out")


def interrupted(delay: float) -> Failure:
    """The worker shut down (or gave the job up) before the handler finished."""
    return Failure(INTERRUPTED, True, "interrupted", delay=delay, counts=False)


def crashed(detail: str) -> Failure:
    """The job's isolated runner died: the job is the culprit of its worker's crashes."""
    return Failure(f"crashed its runner: {detail}", False, "crashed", dead_letter=True)


def permanent(message: str) -> Failure:
    """A failure no retry can fix (an unknown task, a result that is not JSON, ...)."""
    return Failure(safe_text(message), False, "failed")
