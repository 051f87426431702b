"""Job statuses and the table of allowed transitions."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its life."""

    WAITING = "waiting"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = JobStatus

# target status -> the statuses it may be entered from. Every UPDATE that writes jobs.status is
# in app/jobs/transitions/ and guards its WHERE clause with statuses taken from this table, so
# a transition the table does not allow changes zero rows.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # Only ever the status a job is inserted with (run_at beyond SQS's 15-minute delay).
    S.SCHEDULED: frozenset(),
    # Only ever inserted: a workflow job waiting for its parents (depends_on).
    S.WAITING: frozenset(),
    # SCHEDULED -> QUEUED when the dispatcher sends it; WAITING -> QUEUED in the transaction
    # that finishes its last parent; FAILED/CANCELLED -> QUEUED on retry or redrive (a new
    # attempt series); QUEUED/RETRYING -> QUEUED on retry of a job waiting for its delivery
    # (it runs now, its series goes on).
    S.QUEUED: frozenset({S.SCHEDULED, S.WAITING, S.FAILED, S.CANCELLED, S.QUEUED, S.RETRYING}),
    # A claim; RUNNING -> RUNNING only when the previous holder's lease expired (checked in SQL).
    S.RUNNING: frozenset({S.QUEUED, S.RETRYING, S.RUNNING}),
    S.RETRYING: frozenset({S.RUNNING}),
    S.SUCCEEDED: frozenset({S.RUNNING}),
    # RUNNING -> FAILED when an attempt fails for good; QUEUED/RETRYING/RUNNING (lease expired)
    # -> FAILED when the dead-letter consumer or an unclaimable delivery ends an exhausted job.
    S.FAILED: frozenset({S.RUNNING, S.QUEUED, S.RETRYING}),
    # Not started -> CANCELLED at once (WAITING also when a parent fails and the policy is
    # cancel); RUNNING -> CANCELLED when the attempt ends after a cancellation request.
    S.CANCELLED: frozenset({S.WAITING, S.SCHEDULED, S.QUEUED, S.RETRYING, S.RUNNING}),
}

FINAL: frozenset[JobStatus] = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})
# Cancel takes effect at once from these; a running job gets a cancellation request instead.
CANCELLABLE_NOW: frozenset[JobStatus] = frozenset({S.WAITING, S.SCHEDULED, S.QUEUED, S.RETRYING})
RETRYABLE_BY_USER: frozenset[JobStatus] = frozenset({S.FAILED, S.CANCELLED})
# Retry on one of these sends the job again to run now (no new series): its message may be lost.
RUNNABLE_NOW_BY_USER: frozenset[JobStatus] = frozenset({S.QUEUED, S.RETRYING})


def sources(target: JobStatus) -> frozenset[JobStatus]:
    """Statuses from which `target` may be entered."""
    return TRANSITIONS[target]


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    """True if the table allows current -> target."""
    return current in TRANSITIONS[target]
