"""Tasks used by the tests: they record every execution in a table the tests read."""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg2

from jobq import JobContext, PermanentError, Retry, task

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS test_executions (
    id bigserial PRIMARY KEY,
    job_id uuid NOT NULL,
    attempt int NOT NULL,
    pid int NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz
)
"""


def _connect() -> Any:
    url = os.environ["JOBQ_TEST_DATABASE_URL"].replace("postgresql+psycopg2://", "postgresql://")
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


@task("record")
def record(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Record start and end of this execution; optionally sleep, crash the process, or fail
    (after recording the end) on the first `fail_attempts` attempts."""
    conn = _connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO test_executions (job_id, attempt, pid, started_at)"
                " VALUES (%s, %s, %s, now()) RETURNING id",
                (str(ctx.job_id), ctx.attempt, os.getpid()),
            )
            row_id = cur.fetchone()[0]
        if ctx.attempt <= int(payload.get("crash_attempts", 0)):
            os._exit(137)  # like a SIGKILL/OOM of the worker mid-job
        if payload.get("sleep"):
            time.sleep(float(payload["sleep"]))
        with conn.cursor() as cur:
            cur.execute("UPDATE test_executions SET finished_at = now() WHERE id = %s", (row_id,))
    finally:
        conn.close()
    if ctx.attempt <= int(payload.get("fail_attempts", 0)):
        raise RuntimeError(f"failing attempt {ctx.attempt} on purpose")
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@task("permanent")
def permanent(payload: dict[str, Any], ctx: JobContext) -> None:
    """Fail without retry."""
    raise PermanentError("this can never work")


@task("hang", timeout_seconds=1.0)
def hang(payload: dict[str, Any], ctx: JobContext) -> None:
    """Block until cancelled (times out after 1 s)."""
    ctx.cancelled.wait(60)


class _BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ itself fails")


class _Stop(BaseException):
    """A BaseException that is not an Exception (like KeyboardInterrupt)."""


@task("odd")
def odd(payload: dict[str, Any], ctx: JobContext) -> Any:
    """Return or raise something awkward, chosen by payload.kind."""
    import datetime
    import uuid as uuid_mod

    kind = payload["kind"]
    if kind == "nan":
        return {"x": float("nan")}
    if kind == "inf":
        return [float("inf")]
    if kind == "nul":
        return {"text": "a\x00b"}
    if kind == "surrogate":
        return "\ud800"
    if kind == "deep":
        value: Any = []
        for _ in range(5000):
            value = [value]
        return value
    if kind == "set":
        return {1, 2}
    if kind == "big":
        return "x" * (2 * 1024 * 1024)
    if kind == "encodable":
        return {
            "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
            "id": uuid_mod.UUID(int=1),
        }
    if kind == "raise_nul":
        raise ValueError("bad\x00value \ud800")
    if kind == "raise_badstr":
        raise _BadStr()
    if kind == "raise_base":
        raise _Stop("stop")
    if kind == "raise_memory":
        raise MemoryError()
    if kind == "coroutine":

        async def later() -> None:
            return None

        return later()
    return {"ok": kind}


@task("async_echo")
async def async_echo(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """An async handler: awaits, then returns its payload."""
    import asyncio

    await asyncio.sleep(float(payload.get("sleep", 0)))
    return {"echo": payload, "attempt": ctx.attempt}


@task("async_hang", timeout_seconds=1.0)
async def async_hang(payload: dict[str, Any], ctx: JobContext) -> None:
    """Awaits forever, recording whether its coroutine was really cancelled."""
    import asyncio

    conn = _connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO test_executions (job_id, attempt, pid, started_at)"
                " VALUES (%s, %s, %s, now()) RETURNING id",
                (str(ctx.job_id), ctx.attempt, os.getpid()),
            )
            row_id = cur.fetchone()[0]
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            with conn.cursor() as cur:  # finished_at marks "the coroutine saw its cancellation"
                cur.execute(
                    "UPDATE test_executions SET finished_at = now() WHERE id = %s", (row_id,)
                )
            raise
    finally:
        conn.close()


@task("snoozer")
def snoozer(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Snooze `times` times (not failures), then succeed."""
    if ctx.attempt <= int(payload.get("times", 1)):
        ctx.snooze(float(payload.get("seconds", 1)))
    return {"attempt": ctx.attempt, "failures": ctx.failures}


@task("retry_in")
def retry_in(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Ask for the next attempt in `seconds` once, then succeed."""
    if ctx.attempt == 1:
        raise Retry(in_seconds=float(payload["seconds"]), reason="upstream busy")
    return {"attempt": ctx.attempt}


@task("cooperative")
def cooperative(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Record the run, wait `seconds` or until cancelled, record how it ended, return."""
    conn = _connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO test_executions (job_id, attempt, pid, started_at)"
                " VALUES (%s, %s, %s, now()) RETURNING id",
                (str(ctx.job_id), ctx.attempt, os.getpid()),
            )
            row_id = cur.fetchone()[0]
        ctx.cancelled.wait(float(payload.get("seconds", 30)))
        with conn.cursor() as cur:
            cur.execute("UPDATE test_executions SET finished_at = now() WHERE id = %s", (row_id,))
    finally:
        conn.close()
    return {"cancelled": ctx.cancelled.is_set()}


@task("stubborn")
def stubborn(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Record the run and ignore cancellation for `seconds` (a non-cooperative handler)."""
    record(payload | {"sleep": payload.get("seconds", 30)}, ctx)
    return {"done": True}


@task("own_policy", max_attempts=2, backoff=[2.5])
def own_policy(payload: dict[str, Any], ctx: JobContext) -> None:
    """Always fails; retried on the task's own schedule."""
    raise ValueError(f"attempt {ctx.attempt} failed")


@task("fan_in")
def fan_in(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """A workflow callback: return what it was told about its parents."""
    return {"parent_results": ctx.parent_results, "statuses": [p["status"] for p in ctx.parents]}


@task("report_progress")
def report_progress(payload: dict[str, Any], ctx: JobContext) -> str:
    """Report progress, then hold the job running until `hold` seconds pass."""
    for i in range(1, 101):
        ctx.progress(i / 200, f"step {i}")  # many reports: the worker writes a few
    ctx.cancelled.wait(float(payload.get("hold", 3)))
    return "done"


@task("async_report_progress")
async def async_report_progress(payload: dict[str, Any], ctx: JobContext) -> str:
    """The async variant of report_progress."""
    import asyncio

    ctx.progress(0.25, "a quarter")
    await asyncio.sleep(float(payload.get("hold", 3)))
    return "done"


@task("media_echo", queue="media")
def media_echo(payload: dict[str, Any], ctx: JobContext) -> str:
    """Declared on the named queue "media"."""
    return "media"
