"""The worker's decisions, as pure functions (no I/O): the machinery lives elsewhere.

- `finished_attempt`: how an attempt's outcome is recorded (status and attempt outcome);
- `after_finish`: what happens to its SQS message once that is committed;
- `unclaimed_delivery`: what to do with a message whose job could not be claimed;
- `dead_lettered`: what to do with a message that reached the dead-letter queue.

`failed` means the handler failed (a permanent error, or its attempts used up) or the job
crashed its worker repeatedly; `dead_lettered_at` is set on the second and third kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from app.jobs.queries import JobView
from app.jobs.states import FINAL, JobStatus
from app.sqs.limits import MAX_DELAY_SECONDS
from app.tasks.retry import Backoff
from worker.retry import Failure

S = JobStatus

# A delivery that was claimable a moment after its claim failed comes back this much later.
RECLAIM_DELAY_SECONDS = 1


class Sqs(StrEnum):
    """The one SQS action taken on a message after the database is written."""

    DELETE = "delete"
    HIDE = "hide"  # change its visibility to `seconds` (0: visible now)


@dataclass(frozen=True)
class Decision:
    """An optional database write, then an SQS action on the message."""

    sqs: Sqs
    seconds: float = 0.0
    fail_reason: str | None = None  # first end the job `failed` (dead-lettered) with this reason
    # Before deleting: send a fresh message for the job, delayed this long (a retry's next run,
    # or a dead-lettered job that never ran going back to its queue).
    resend: float | None = None
    redelivered: bool = False  # count one more redelivery from the DLQ


@dataclass(frozen=True)
class Limits:
    """The settings the decisions depend on."""

    max_crashes: int = 3
    max_redeliveries: int = 10
    lease_margin: float = 5.0


@dataclass(frozen=True)
class Recorded:
    """How a finished run is written: the job's new status, the attempt's outcome, and for a
    job that runs again, after how long."""

    status: JobStatus
    outcome: str
    counts: bool = False  # one more failure towards max_attempts
    delay: float = 0.0  # retrying: seconds until the next run
    dead_letter: bool = False  # failed for good after exhausting attempts or crashing


def finished_attempt(
    failure: Failure | None, *, failures: int, max_attempts: int, backoff: Backoff, rnd: float
) -> Recorded:
    """Succeeded; retrying (after a failure with attempts left, a snooze or an interruption,
    with its delay); or failed (a permanent error, attempts used up, or a crash)."""
    if failure is None:
        return Recorded(S.SUCCEEDED, "succeeded")
    if not failure.counts:
        return Recorded(S.RETRYING, failure.outcome, delay=max(0.0, failure.delay or 0.0))
    used = failures + 1
    if failure.dead_letter:
        return Recorded(S.FAILED, failure.outcome, counts=True, dead_letter=True)
    if not failure.retryable:
        return Recorded(S.FAILED, failure.outcome, counts=True)
    if used >= max_attempts:
        return Recorded(S.FAILED, failure.outcome, counts=True, dead_letter=True)
    delay = failure.delay if failure.delay is not None else backoff.delay(used, rnd)
    return Recorded(S.RETRYING, failure.outcome, counts=True, delay=max(0.0, delay))


def after_finish(recorded: Recorded) -> Decision:
    """The message's fate once the run's outcome is committed.

    Finished jobs' messages are deleted. A job that runs again goes out as a fresh delivery
    (so SQS's receive count, the crash guard, starts again for each run): delayed up to SQS's
    15 minutes, or, for a longer wait, sent by the dispatcher when it comes due.
    """
    if recorded.status != S.RETRYING:
        return Decision(Sqs.DELETE)
    if recorded.delay > MAX_DELAY_SECONDS:
        return Decision(Sqs.DELETE)
    return Decision(Sqs.DELETE, resend=recorded.delay)


def _lease_left(current: JobView, limits: Limits) -> float:
    """Seconds until a new holder may claim it (the lease plus the margin); 0 if it may now."""
    if current.status != S.RUNNING:
        return 0.0
    return max(0.0, current.lease_seconds_left + limits.lease_margin)


def _crash_limit(current: JobView, limits: Limits) -> str | None:
    """The reason to fail a job whose runs keep taking their worker down, if they do."""
    crashes = current.crashes + (1 if current.status == S.RUNNING else 0)
    if crashes >= limits.max_crashes:
        return f"crashed its worker {crashes} time(s) (JOBQ_MAX_CRASHES={limits.max_crashes})"
    return None


def unclaimed_delivery(current: JobView | None, limits: Limits) -> Decision:
    """A delivery whose claim changed no row: a duplicate, finished, not due, or crashing."""
    if current is None or current.status in FINAL:
        return Decision(Sqs.DELETE)  # unknown or finished: a leftover duplicate
    if _lease_left(current, limits) > 0:
        # Another worker holds it under a live lease: leave this copy alone until then.
        return Decision(Sqs.HIDE, _lease_left(current, limits) + 1)
    if current.run_at_seconds_left > 1:
        return Decision(Sqs.HIDE, current.run_at_seconds_left)  # delivered early: hide until due
    if current.status in (S.SCHEDULED, S.WAITING):
        # The dispatcher publishes a fresh message when it is due; a waiting job gets one
        # when its last parent finishes.
        return Decision(Sqs.DELETE)
    if (reason := _crash_limit(current, limits)) is not None:
        return Decision(Sqs.DELETE, fail_reason=reason)
    if current.failures >= current.max_attempts:
        return Decision(Sqs.DELETE, fail_reason=f"exhausted {current.failures} attempt(s)")
    # Claimable by now: the claim just missed it (a lease expiring between the claim and this
    # look, a run_at within the second). Deleting would lose the job.
    return Decision(Sqs.HIDE, RECLAIM_DELAY_SECONDS)


def dead_lettered(current: JobView | None, limits: Limits) -> Decision:
    """A message SQS moved to the dead-letter queue (received maxReceiveCount times).

    A job that crashed its worker too often fails (dead-lettered). One that never ran, or whose
    runs ended only because of infrastructure (a database outage, duplicates), goes back to its
    queue, up to JOBQ_MAX_REDELIVERIES times. A job another worker runs is left alone.
    """
    if current is None or current.status in FINAL or current.status in (S.SCHEDULED, S.WAITING):
        return Decision(Sqs.DELETE)
    if _lease_left(current, limits) > 0:
        return Decision(Sqs.HIDE, _lease_left(current, limits) + 1)
    if (reason := _crash_limit(current, limits)) is not None:
        return Decision(Sqs.DELETE, fail_reason=reason)
    if current.redeliveries >= limits.max_redeliveries:
        reason = (
            f"reached the dead-letter queue {current.redeliveries + 1} times without finishing "
            f"(JOBQ_MAX_REDELIVERIES={limits.max_redeliveries})"
        )
        return Decision(Sqs.DELETE, fail_reason=reason)
    return Decision(Sqs.DELETE, resend=current.run_at_seconds_left, redelivered=True)
