"""A task declared with a schedule, loaded only by the worker processes of
tests/test_schedules.py (a schedule in tests/tasks.py would fire in every test)."""

from __future__ import annotations

from typing import Any

from jobq import JobContext, task


@task("every_minute_report", schedule="*/1 * * * *", tz="Europe/Berlin")
def every_minute_report(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Scheduled in code."""
    return {"ran": True}
