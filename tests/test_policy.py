"""Pure parts: retry policy, error classification, the transitions table, SQS limits."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from app.config import Settings
from app.errors import PermanentError, Retry, RetryableError, Snooze
from app.jobs.queries import JobView
from app.jobs.states import FINAL, TRANSITIONS, JobStatus, can_transition
from app.sqs.limits import MAX_VISIBILITY_TIMEOUT
from app.sqs.queue import clamp_visibility, decode_job_id
from app.tasks.retry import Exponential, Fixed, as_backoff
from worker.policy import (
    Decision,
    Limits,
    Recorded,
    Sqs,
    after_finish,
    dead_lettered,
    finished_attempt,
    unclaimed_delivery,
)
from worker.retry import Failure, classify


def test_exponential_backoff_grows_within_jitter_bounds() -> None:
    schedule = Exponential(base_seconds=2, cap_seconds=1000, jitter=0.25)
    lows = [schedule.delay(n, 0.0) for n in range(1, 6)]
    highs = [schedule.delay(n, 1.0) for n in range(1, 6)]
    assert lows == [1.5, 3, 6, 12, 24]
    assert highs == [2.5, 5, 10, 20, 40]
    assert Exponential(2, 300, 0).delay(50, 1.0) == 300


def test_fixed_and_listed_schedules() -> None:
    assert [Fixed(7).delay(n, 0.3) for n in (1, 5)] == [7, 7]
    listed = as_backoff([10, 60, 600])
    assert [listed.delay(n, 0.9) for n in (1, 2, 3, 4)] == [10, 60, 600, 600]  # type: ignore[union-attr]
    assert as_backoff(5) == Fixed(5.0)
    with pytest.raises(ValueError):
        as_backoff([])


def test_default_schedule_rides_out_an_hour_with_ten_attempts() -> None:
    schedule = Settings(database_url="x").default_backoff
    assert Settings(database_url="x").max_attempts == 10
    # Nine waits between ten attempts, with the jitter at its lowest.
    assert sum(schedule.delay(n, 0.0) for n in range(1, 10)) >= 3600


def test_classification() -> None:
    assert classify(RetryableError("x")).retryable
    assert not classify(PermanentError("x")).retryable
    assert classify(ValueError("bad")).retryable
    assert classify(ValueError("bad")).message == "ValueError: bad"
    assert "ValueError: bad" in (classify(ValueError("bad")).traceback or "")
    snoozed = classify(Snooze(30))
    assert snoozed.outcome == "snoozed" and not snoozed.counts and snoozed.delay == 30
    assert classify(Retry(in_seconds=12, reason="busy")).delay == 12

    class M(BaseModel):
        n: int

    with pytest.raises(ValidationError) as info:
        M.model_validate({"n": "x"})
    assert not classify(info.value).retryable


def _decide(failure: Failure | None, failures: int, max_attempts: int = 3) -> Recorded:
    return finished_attempt(
        failure, failures=failures, max_attempts=max_attempts, backoff=Fixed(9), rnd=0.5
    )


def test_finished_attempt_decisions() -> None:
    retryable = Failure("boom", True, "failed")
    assert _decide(None, 0).status == JobStatus.SUCCEEDED
    again = _decide(retryable, 0)
    assert (again.status, again.counts, again.delay, again.dead_letter) == (
        JobStatus.RETRYING,
        True,
        9,
        False,
    )
    # The last attempt used up: failed, and dead-lettered whatever max_attempts is.
    for max_attempts in (1, 2, 3):
        last = _decide(retryable, max_attempts - 1, max_attempts)
        assert last.status == JobStatus.FAILED and last.dead_letter
    permanent = _decide(Failure("no", False, "failed"), 0)
    assert permanent.status == JobStatus.FAILED and not permanent.dead_letter
    snooze = _decide(Failure("zz", True, "snoozed", delay=40, counts=False), 2)
    assert (snooze.status, snooze.counts, snooze.delay) == (JobStatus.RETRYING, False, 40)
    override = _decide(Failure("later", True, "failed", delay=77), 0)
    assert override.delay == 77
    crash = _decide(Failure("died", False, "crashed", dead_letter=True), 0)
    assert crash.status == JobStatus.FAILED and crash.dead_letter


def test_after_finish_resends_runs_due_soon_and_leaves_long_waits_to_the_dispatcher() -> None:
    assert after_finish(Recorded(JobStatus.SUCCEEDED, "succeeded")) == Decision(Sqs.DELETE)
    soon = after_finish(Recorded(JobStatus.RETRYING, "failed", delay=30))
    assert soon == Decision(Sqs.DELETE, resend=30)
    later = after_finish(Recorded(JobStatus.RETRYING, "failed", delay=3600))
    assert later == Decision(Sqs.DELETE)


def _view(status: JobStatus, **fields: Any) -> JobView:
    return JobView(
        status,
        fields.pop("attempts", 1),
        fields.pop("max_attempts", 3),
        fields.pop("lease", -10.0),
        **fields,
    )


def test_dead_lettered_message_policy() -> None:
    limits = Limits(max_crashes=3, max_redeliveries=2, lease_margin=5)
    assert dead_lettered(None, limits) == Decision(Sqs.DELETE)
    assert dead_lettered(_view(JobStatus.SUCCEEDED), limits) == Decision(Sqs.DELETE)
    # Another worker still runs it (margin included): look again later, never fail it.
    held = dead_lettered(_view(JobStatus.RUNNING, lease=-2.0), limits)
    assert held.sqs == Sqs.HIDE and held.seconds == 4 and held.fail_reason is None
    # Never ran (a database outage burnt its receives): back to its queue, counted.
    back = dead_lettered(_view(JobStatus.QUEUED, attempts=0), limits)
    assert back.redelivered and back.resend == 0 and back.fail_reason is None
    retrying = dead_lettered(_view(JobStatus.RETRYING, failures=1), limits)
    assert retrying.redelivered and retrying.fail_reason is None
    # Bounded: past JOBQ_MAX_REDELIVERIES it fails.
    assert dead_lettered(_view(JobStatus.QUEUED, redeliveries=2), limits).fail_reason
    # A job that keeps crashing its worker fails.
    crashing = dead_lettered(_view(JobStatus.RUNNING, crashes=2), limits)
    assert crashing.fail_reason and "crashed its worker 3 time(s)" in crashing.fail_reason


def test_unclaimed_delivery_policy() -> None:
    limits = Limits(max_crashes=3, lease_margin=5)
    assert unclaimed_delivery(_view(JobStatus.FAILED), limits) == Decision(Sqs.DELETE)
    live = unclaimed_delivery(_view(JobStatus.RUNNING, lease=10.0), limits)
    assert live == Decision(Sqs.HIDE, 16)
    early = unclaimed_delivery(_view(JobStatus.RETRYING, run_at_seconds_left=42.0), limits)
    assert early == Decision(Sqs.HIDE, 42)
    crashed = unclaimed_delivery(_view(JobStatus.RUNNING, crashes=2), limits)
    assert crashed.fail_reason and crashed.sqs == Sqs.DELETE
    assert unclaimed_delivery(_view(JobStatus.QUEUED), limits) == Decision(Sqs.HIDE, 1)


def test_transition_table() -> None:
    assert can_transition(JobStatus.QUEUED, JobStatus.RUNNING)
    assert can_transition(JobStatus.RETRYING, JobStatus.RUNNING)
    assert not can_transition(JobStatus.SUCCEEDED, JobStatus.RUNNING)
    assert not can_transition(JobStatus.QUEUED, JobStatus.SUCCEEDED)
    # No transition leaves succeeded: a finished job is never run again by accident.
    assert all(JobStatus.SUCCEEDED not in sources for sources in TRANSITIONS.values())
    assert {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED} == FINAL


def test_visibility_and_body_decoding() -> None:
    assert clamp_visibility(-5) == 0
    assert clamp_visibility(10**9) == MAX_VISIBILITY_TIMEOUT
    assert decode_job_id('{"job_id": "not-a-uuid"}') is None
    assert decode_job_id("[]") is None
