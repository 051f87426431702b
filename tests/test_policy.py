"""Pure parts: retry policy, error classification, the transitions table, SQS limits."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from app.errors import PermanentError, RetryableError
from app.jobs.states import FINAL, TRANSITIONS, JobStatus, can_transition
from app.queue import clamp_visibility, decode_job_id
from app.sqs_limits import MAX_VISIBILITY_TIMEOUT
from worker.retry import backoff_seconds, classify, is_final_attempt


def test_backoff_grows_exponentially_within_jitter_bounds() -> None:
    lows = [backoff_seconds(a, base=2, cap=1000, jitter=0.0) for a in range(1, 6)]
    highs = [backoff_seconds(a, base=2, cap=1000, jitter=1.0) for a in range(1, 6)]
    assert lows == [1, 2, 4, 8, 16]
    assert highs == [2, 4, 8, 16, 32]


def test_backoff_is_capped_by_config_and_by_sqs() -> None:
    assert backoff_seconds(50, base=2, cap=300, jitter=1.0) == 300
    assert backoff_seconds(10_000, base=2, cap=10**9, jitter=1.0) == MAX_VISIBILITY_TIMEOUT
    with pytest.raises(ValueError):
        backoff_seconds(0, base=1, cap=1, jitter=0)


def test_classification() -> None:
    assert classify(RetryableError("x")).retryable
    assert not classify(PermanentError("x")).retryable
    assert classify(ValueError("bad")).retryable
    assert classify(ValueError("bad")).message == "ValueError: bad"
    assert classify(TimeoutError(), timed_out=True).outcome == "timed_out"

    class M(BaseModel):
        n: int

    with pytest.raises(ValidationError) as info:
        M.model_validate({"n": "x"})
    assert not classify(info.value).retryable


def test_final_attempt() -> None:
    assert not is_final_attempt(2, 3)
    assert is_final_attempt(3, 3)


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
