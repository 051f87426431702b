"""Tasks used by the tests: they record every execution in a table the tests read."""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg2

from app.errors import PermanentError
from app.tasks import JobContext, task

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
    """Record start and end of this execution; optionally sleep or crash the process."""
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
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@task("permanent")
def permanent(payload: dict[str, Any], ctx: JobContext) -> None:
    """Fail without retry."""
    raise PermanentError("this can never work")


@task("hang", timeout_seconds=1.0)
def hang(payload: dict[str, Any], ctx: JobContext) -> None:
    """Block until cancelled (times out after 1 s)."""
    ctx.cancelled.wait(60)
