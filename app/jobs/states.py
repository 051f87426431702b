"""Job statuses and the table of allowed transitions."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its life."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = JobStatus

# target status -> statuses it may be reached from. Every write of `status` goes through
# a guarded UPDATE built from this table, so a disallowed transition changes zero rows.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # SCHEDULED -> QUEUED when due (dispatcher); FAILED/CANCELLED -> QUEUED on retry / replay.
    S.QUEUED: frozenset({S.SCHEDULED, S.FAILED, S.CANCELLED}),
    S.SCHEDULED: frozenset({S.FAILED, S.CANCELLED}),  # retry of a job with a future run_at
    # RUNNING from RUNNING only when the previous holder's lease expired (checked in SQL).
    S.RUNNING: frozenset({S.QUEUED, S.RETRYING, S.RUNNING}),
    S.RETRYING: frozenset({S.RUNNING}),
    S.SUCCEEDED: frozenset({S.RUNNING}),
    # QUEUED/RETRYING/RUNNING -> FAILED: the dead-letter consumer, or a claim past max attempts.
    S.FAILED: frozenset({S.RUNNING, S.QUEUED, S.RETRYING}),
    S.CANCELLED: frozenset({S.SCHEDULED, S.QUEUED, S.RETRYING, S.RUNNING}),
}

FINAL: frozenset[JobStatus] = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})
CLAIMABLE: frozenset[JobStatus] = frozenset({S.QUEUED, S.RETRYING})
# Cancel takes effect at once from these; a running job gets a cancellation request instead.
CANCELLABLE_NOW: frozenset[JobStatus] = frozenset({S.SCHEDULED, S.QUEUED, S.RETRYING})
RETRYABLE_BY_USER: frozenset[JobStatus] = frozenset({S.FAILED, S.CANCELLED})


def sources(target: JobStatus) -> frozenset[JobStatus]:
    """Statuses from which `target` may be entered."""
    return TRANSITIONS[target]


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    """True if the table allows current -> target."""
    return current in TRANSITIONS[target]
