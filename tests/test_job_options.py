"""Per-job options (max_attempts, timeout_seconds, run_at, delay, priority): honoured, and
refused with a 422 naming the field when bad."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import wait_for_status


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"run_at": "2030-01-01T00:00:00"}, "run_at"),
        ({"run_at": "tomorrow"}, "run_at"),
        ({"delay_seconds": -1}, "delay_seconds"),
        ({"delay_seconds": 5, "run_at": "2030-01-01T00:00:00Z"}, "run_at"),
        ({"priority": "urgent"}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 101}, "max_attempts"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
    ],
)
def test_bad_job_options_are_422(api: Any, extra: dict[str, Any], field: str) -> None:
    resp = api.post("/jobs", json={"task": "echo", **extra})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field


def test_per_job_max_attempts_and_timeout(api: Any, worker_factory: Any) -> None:
    worker_factory()
    once = api.post("/jobs", json={"task": "fail", "max_attempts": 1}).json()
    short = api.post(
        "/jobs",
        json={
            "task": "sleep",
            "payload": {"seconds": 30},
            "timeout_seconds": 0.5,
            "max_attempts": 1,
        },
    ).json()
    assert wait_for_status(api, once["id"], "failed")["attempts"] == 1
    timed = wait_for_status(api, short["id"], "failed")
    assert "timed out" in timed["error"]
