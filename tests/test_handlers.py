"""Handlers as teams write them: async and sync side by side, honest results, tracebacks,
snooze and Retry, per-task retry policy; against the real PostgreSQL and SQS server."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.helpers import scalar, wait_for, wait_for_status


def _submit(api: Any, task: str, payload: dict[str, Any] | None = None, **options: Any) -> str:
    resp = api.post("/jobs", json={"task": task, "payload": payload or {}, **options})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def test_async_and_sync_handlers_run_side_by_side_in_one_worker(
    api: Any, worker_factory: Any
) -> None:
    worker_factory(worker_concurrency=8)
    async_ids = [_submit(api, "async_echo", {"n": i, "sleep": 0.2}) for i in range(6)]
    sync_ids = [_submit(api, "echo", {"n": i}) for i in range(6)]
    for i, job_id in enumerate(async_ids):
        done = wait_for_status(api, job_id)
        assert done["status"] == "succeeded", done
        assert done["result"] == {"echo": {"n": i, "sleep": 0.2}, "attempt": 1}
    assert all(wait_for_status(api, j)["status"] == "succeeded" for j in sync_ids)


def test_an_async_timeout_cancels_the_coroutine_for_real(
    api: Any, worker_factory: Any, db: Any
) -> None:
    worker_factory()
    job_id = _submit(api, "async_hang", max_attempts=1)
    done = wait_for_status(api, job_id)
    assert done["status"] == "failed" and "timed out after 1 s" in done["error"]
    # The coroutine saw asyncio's CancelledError (it stamped finished_at when it did).
    stamped = wait_for(
        lambda: scalar(
            db,
            "SELECT count(*) FROM test_executions WHERE job_id = %s AND finished_at IS NOT NULL",
            job_id,
        ),
        what="the coroutine to be cancelled",
    )
    assert stamped == 1


def test_a_sync_handler_returning_a_coroutine_is_an_error_naming_the_task(
    api: Any, worker_factory: Any
) -> None:
    worker_factory()
    done = wait_for_status(api, _submit(api, "odd", {"kind": "coroutine"}))
    assert done["status"] == "failed" and done["attempts"] == 1
    assert "task 'odd' returned an awaitable" in done["error"]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("set", "builtins.set cannot be encoded"),
        ("nan", "NaN and Infinity are not JSON"),
        ("inf", "NaN and Infinity are not JSON"),
        ("nul", "NUL character"),
        ("surrogate", "lone surrogate"),
        ("deep", "nested too deeply"),
        ("big", "JOBQ_MAX_RESULT_BYTES"),
    ],
)
def test_results_that_are_not_json_fail_permanently_with_a_reason(
    api: Any, worker_factory: Any, kind: str, expected: str
) -> None:
    worker_factory()
    done = wait_for_status(api, _submit(api, "odd", {"kind": kind}))
    assert done["status"] == "failed" and done["attempts"] == 1, done
    assert expected in done["error"]
    assert done["result"] is None


def test_results_are_encoded_by_the_documented_rule(api: Any, worker_factory: Any) -> None:
    worker_factory()
    done = wait_for_status(api, _submit(api, "odd", {"kind": "encodable"}))
    assert done["result"] == {
        "when": "2026-01-02T03:04:05+00:00",
        "id": "00000000-0000-0000-0000-000000000001",
    }


def test_failed_attempts_store_a_traceback_and_the_final_failure_is_logged_at_error(
    api: Any, worker_factory: Any, caplog: Any
) -> None:
    worker_factory()
    caplog.set_level(logging.INFO)
    job_id = _submit(api, "fail", {"message": "upstream said no"}, max_attempts=2)
    done = wait_for_status(api, job_id)
    assert done["status"] == "failed" and done["dead_lettered_at"] is not None
    history = api.get(f"/jobs/{job_id}/attempts").json()
    assert [a["outcome"] for a in history] == ["failed", "failed"]
    for attempt in history:
        assert attempt["traceback"].startswith("Traceback (most recent call last)")
        assert (
            "upstream said no" in attempt["traceback"]
            and "tasks/builtin.py" in attempt["traceback"]
        )
    final = [r for r in caplog.records if r.getMessage() == "job failed"]
    assert len(final) == 1 and final[0].levelno == logging.ERROR
    assert getattr(final[0], "traceback", "").startswith("Traceback")
    assert getattr(final[0], "trace_id", None)  # the job's trace id, for finding its request


def test_odd_exceptions_are_recorded_readably(api: Any, worker_factory: Any) -> None:
    worker_factory()
    expected = {
        "raise_nul": "ValueError: bad\\x00value \\ud800",
        "raise_badstr": "_BadStr: <str() of the exception failed: RuntimeError>",
        "raise_base": "_Stop: stop",
        "raise_memory": "MemoryError",
    }
    ids = {kind: _submit(api, "odd", {"kind": kind}, max_attempts=1) for kind in expected}
    for kind, job_id in ids.items():
        done = wait_for_status(api, job_id)
        assert done["status"] == "failed", done
        assert expected[kind] in done["error"], (kind, done["error"])


def test_retry_series_are_told_apart_in_the_history(api: Any, worker_factory: Any) -> None:
    worker_factory()
    job_id = _submit(api, "permanent")
    assert wait_for_status(api, job_id)["status"] == "failed"
    assert api.post(f"/jobs/{job_id}/retry").status_code == 200
    wait_for(
        lambda: len(api.get(f"/jobs/{job_id}/attempts").json()) == 2,
        what="the second series to run",
    )
    history = api.get(f"/jobs/{job_id}/attempts").json()
    assert [(a["series"], a["attempt"]) for a in history] == [(1, 1), (2, 1)]
    assert api.get(f"/jobs/{job_id}").json()["series"] == 2


def test_snooze_runs_again_later_without_using_an_attempt(api: Any, worker_factory: Any) -> None:
    worker_factory()
    job_id = _submit(api, "snoozer", {"times": 3, "seconds": 1}, max_attempts=1)
    done = wait_for_status(api, job_id)
    # Three snoozes and a success, with max_attempts=1: snoozes are not failures.
    assert done["status"] == "succeeded" and done["result"] == {"attempt": 4, "failures": 0}
    outcomes = [a["outcome"] for a in api.get(f"/jobs/{job_id}/attempts").json()]
    assert outcomes == ["snoozed", "snoozed", "snoozed", "succeeded"]


def test_retry_with_in_seconds_overrides_the_backoff(
    api: Any, worker_factory: Any, settings: Any
) -> None:
    # The default backoff here would retry within 1 s; the handler asks for 3 s.
    worker_factory()
    job_id = _submit(api, "retry_in", {"seconds": 3})
    done = wait_for_status(api, job_id)
    assert done["status"] == "succeeded" and done["attempts"] == 2
    history = api.get(f"/jobs/{job_id}/attempts").json()
    gap = _seconds_between(history[0]["finished_at"], history[1]["started_at"])
    assert 3 <= gap < 10, gap
    assert history[0]["error"] == "upstream busy"


def test_a_task_declares_its_own_retry_policy(api: Any, worker_factory: Any) -> None:
    worker_factory()  # the service default here is 0.5-1 s; the task declares [2.5] and 2
    job_id = _submit(api, "own_policy")
    done = wait_for_status(api, job_id)
    assert done["status"] == "failed" and done["max_attempts"] == 2
    history = api.get(f"/jobs/{job_id}/attempts").json()
    assert 2.5 <= _seconds_between(history[0]["finished_at"], history[1]["started_at"]) < 10


def test_ten_attempts_with_time_compressed_by_configuration(
    api: Any, worker_factory: Any, settings: Any
) -> None:
    # max_attempts above the queue's maxReceiveCount (4): attempts are jobq's, not SQS's.
    worker_factory(backoff_base_seconds=0.1, backoff_cap_seconds=0.4)
    job_id = _submit(api, "flaky", {"failures": 9}, max_attempts=10)
    done = wait_for_status(api, job_id, timeout=60)
    assert done["status"] == "succeeded" and done["attempts"] == 10 and done["failures"] == 9


def test_max_attempts_is_capped_by_the_ceiling_not_by_the_queue(api: Any) -> None:
    ok = api.post("/jobs", json={"task": "echo", "max_attempts": 100})
    assert ok.status_code == 201 and ok.json()["max_attempts"] == 100
    over = api.post("/jobs", json={"task": "echo", "max_attempts": 101})
    assert over.status_code == 422 and over.json()["error"]["field"] == "max_attempts"


def _seconds_between(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()
