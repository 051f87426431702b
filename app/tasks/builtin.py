"""Built-in tasks, registered by default so a newcomer sees jobs run."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobq import JobContext, RetryableError, TaskTimeout, task


class SleepPayload(BaseModel):
    """Payload of `sleep`."""

    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0, le=3600)


class FailPayload(BaseModel):
    """Payload of `fail`."""

    message: str = Field("failed on purpose", max_length=10_000)


class FlakyPayload(BaseModel):
    """Payload of `flaky`."""

    model_config = ConfigDict(extra="forbid")
    failures: int = Field(1, ge=0, le=1000)


@task("echo")
def echo(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Return the payload as the result."""
    return payload


@task("sleep", payload_model=SleepPayload, timeout_seconds=3600 + 60)
def sleep(payload: SleepPayload, ctx: JobContext) -> dict[str, float]:
    """Sleep `seconds`, waking early (as a failure) if the attempt is cancelled."""
    if ctx.cancelled.wait(payload.seconds):
        raise TaskTimeout(f"sleep interrupted after less than {payload.seconds} s")
    return {"slept": payload.seconds}


@task("fail", payload_model=FailPayload)
def fail(payload: FailPayload, ctx: JobContext) -> None:
    """Always raise a retryable error carrying the payload's message."""
    raise RetryableError(payload.message)


@task("flaky", payload_model=FlakyPayload)
def flaky(payload: FlakyPayload, ctx: JobContext) -> dict[str, int]:
    """Fail the first `failures` attempts, then succeed."""
    if ctx.attempt <= payload.failures:
        raise RetryableError(f"flaky failure {ctx.attempt} of {payload.failures}")
    return {"attempt": ctx.attempt}
