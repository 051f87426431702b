"""Cron and interval schedules: the rules, /schedules, catch-up, and one job per tick with
several tickers (threads here, API processes in the cross-process test)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from app.errors import InvalidInput
from app.runtime import Runtime
from app.schedules.rules import Rule
from app.schedules.service import sync_code_schedules
from app.schedules.ticker import Ticker
from tests.helpers import api_process, rows, start_worker_process, wait_for

BERLIN = "Europe/Berlin"


def test_cron_rule_follows_the_time_zone_across_dst() -> None:
    rule = Rule.parse("30 2 * * *", None, BERLIN)
    # 2026-03-29: 02:30 does not exist in Berlin (clocks jump 02:00 -> 03:00).
    before = datetime(2026, 3, 28, 12, tzinfo=UTC)
    first = rule.next_after(before)
    assert first == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 CEST, the first valid time
    second = rule.next_after(first)
    assert second == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert rule.latest(second) == second
    assert rule.latest(second + timedelta(hours=1)) == second


def test_interval_ticks_are_the_same_in_every_process() -> None:
    rule = Rule.parse(None, 60, "UTC")
    now = datetime(2026, 12, 2, 10, 0, 30, tzinfo=UTC)
    assert rule.latest(now) == datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    assert rule.next_after(now) == datetime(2026, 12, 2, 10, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cron", "interval", "tz", "field"),
    [
        ("not cron", None, "UTC", "cron"),
        ("* * * * *", None, "Mars/Olympus", "timezone"),
        ("* * * * *", None, "America", "timezone"),  # a folder of zones, not a zone
        ("* * * * *", None, "America", "timezone"),
        (None, None, "UTC", "cron"),
        ("* * * * *", 60, "UTC", "cron"),
    ],
)
def test_invalid_rules_name_the_field(
    cron: str | None, interval: int | None, tz: str, field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        Rule.parse(cron, interval, tz)
    assert caught.value.field == field


def test_schedules_api_crud(api: Any) -> None:
    body = {"name": "nightly", "task": "echo", "cron": "0 3 * * *", "timezone": BERLIN}
    created = api.post("/schedules", json=body)
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert schedule["source"] == "api" and schedule["enabled"] is True
    next_run = datetime.fromisoformat(schedule["next_run_at"])
    assert next_run.astimezone(ZoneInfo(BERLIN)).hour == 3
    assert api.post("/schedules", json=body).status_code == 409
    bad = api.post("/schedules", json={**body, "name": "x", "cron": "61 * * * *"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "cron"
    unknown = api.post("/schedules", json={**body, "name": "y", "task": "nope"})
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "task"
    assert [s["name"] for s in api.get("/schedules").json()["items"]] == ["nightly"]
    paused = api.patch("/schedules/nightly", json={"enabled": False, "interval_seconds": 600})
    assert paused.status_code == 200, paused.text
    assert paused.json()["enabled"] is False and paused.json()["cron"] is None
    assert api.get(f"/schedules/{schedule['id']}").json()["interval_seconds"] == 600
    assert api.delete("/schedules/nightly").status_code == 204
    assert api.get("/schedules/nightly").status_code == 404


def _overdue(db: Any, name: str, minutes: float) -> None:
    with db.cursor() as cur:
        cur.execute(
            "UPDATE schedules SET next_run_at = date_trunc('minute', now())"
            " - make_interval(mins => %s) WHERE name = %s",
            (minutes, name),
        )


def _jobs_of(db: Any, name: str) -> list[tuple[Any, ...]]:
    return rows(
        db,
        "SELECT j.schedule_tick, j.status FROM jobs j JOIN schedules s"
        " ON s.id = j.schedule_id WHERE s.name = %s ORDER BY 1",
        name,
    )


def _ticker(runtime: Runtime) -> Ticker:
    return Ticker(runtime.sqs, runtime.sessions, runtime.registry, runtime.settings)


@pytest.mark.parametrize("catch_up", ["once", "skip"])
def test_missed_ticks_follow_the_catch_up_policy(
    api: Any, db: Any, runtime: Runtime, catch_up: str
) -> None:
    body = {"name": "m", "task": "echo", "cron": "* * * * *", "catch_up": catch_up}
    assert api.post("/schedules", json=body).status_code == 201
    # The API's own ticker runs too: it may fire first, with the same outcome.
    _overdue(db, "m", 10)  # ten ticks missed while "everything was down"
    _ticker(runtime).fire_due()
    jobs = _jobs_of(db, "m")
    if catch_up == "once":
        assert len(jobs) == 1
        # ...for the latest missed tick, not the first one.
        assert jobs[0][0] > datetime.now(UTC) - timedelta(minutes=1, seconds=5)
    else:
        assert jobs == []
    schedule = api.get("/schedules/m").json()
    assert datetime.fromisoformat(schedule["next_run_at"]) > datetime.now(UTC)


def test_one_job_per_tick_with_many_tickers_at_once(api: Any, db: Any, runtime: Runtime) -> None:
    body = {"name": "race", "task": "echo", "cron": "* * * * *"}
    assert api.post("/schedules", json=body).status_code == 201
    tickers = [_ticker(runtime) for _ in range(8)]
    for _ in range(5):
        _overdue(db, "race", 0)
        barrier = threading.Barrier(len(tickers))

        def fire(t: Ticker, start: threading.Barrier) -> None:
            start.wait()
            t.fire_due()

        threads = [threading.Thread(target=fire, args=(t, barrier)) for t in tickers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # A schedule whose next_run_at is put back onto a tick that already has its job
        # (as a PATCH or a restore might) still gets one job: the unique index decides.
    ticks = [tick for tick, _ in _jobs_of(db, "race")]
    # One tick (two if a minute began meanwhile), and one job for each.
    assert 1 <= len(ticks) == len(set(ticks)) <= 2


def test_code_schedules_are_upserted_and_keep_their_enabled_flag(
    api: Any, db: Any, runtime: Runtime
) -> None:
    from app.tasks.registry import Registry

    registry = Registry()
    registry.register("reporter", schedule="*/5 * * * *", tz=BERLIN)(lambda p, c: None)
    assert sync_code_schedules(runtime.sessions, registry) == 1
    first = api.get("/schedules/reporter").json()
    assert first["source"] == "code" and first["cron"] == "*/5 * * * *"
    assert api.patch("/schedules/reporter", json={"enabled": False}).status_code == 200
    sync_code_schedules(runtime.sessions, registry)  # the next worker start
    again = api.get("/schedules/reporter").json()
    assert again["enabled"] is False and again["next_run_at"] == first["next_run_at"]
    changed = Registry()
    changed.register("reporter", schedule="0 * * * *", tz=BERLIN)(lambda p, c: None)
    sync_code_schedules(runtime.sessions, changed)
    assert api.get("/schedules/reporter").json()["cron"] == "0 * * * *"


def test_one_job_per_tick_across_two_apis_and_two_workers(
    settings: Any, db: Any, procs_dir: Any
) -> None:
    """Two API processes (each runs a dispatcher and a ticker) and two worker processes: a
    cron schedule ticking every second gets exactly one job per tick, and each one runs."""
    fast = {"JOBQ_SCHEDULE_INTERVAL_SECONDS": "0.1", "JOBQ_DISPATCHER": "true"}
    workers = [
        start_worker_process(
            settings,
            procs_dir / f"worker{i}.log",
            JOBQ_TASK_MODULES=f"{settings.task_modules},tests.flow_tasks",
        )
        for i in range(2)
    ]
    try:
        with (
            api_process(settings, procs_dir / "api1.log", **fast) as (url1, _),
            api_process(settings, procs_dir / "api2.log", **fast) as (url2, _),
        ):
            # A six-field cron expression (seconds first): a tick every second.
            body = {
                "name": "every-second",
                "task": "echo",
                "cron": "* * * * * *",
                "timezone": BERLIN,
            }
            assert httpx.post(url1 + "/schedules", json=body).status_code == 201

            def succeeded() -> list[Any]:
                jobs = _jobs_of(db, "every-second")
                return jobs if sum(s == "succeeded" for _, s in jobs) >= 5 else []

            wait_for(succeeded, timeout=60, what="five scheduled jobs to succeed")
            ticks = [tick for tick, _ in _jobs_of(db, "every-second")]
            assert len(ticks) == len(set(ticks)), "a tick got more than one job"
            seen = httpx.get(url2 + "/schedules/every-second").json()
            assert seen["last_run_at"] is not None and seen["last_job_id"] is not None
            assert datetime.fromisoformat(seen["next_run_at"]) > datetime.fromisoformat(
                seen["last_run_at"]
            )
            # The workers declared the schedule of tests/flow_tasks.py at start.
            wait_for(
                lambda: httpx.get(url2 + "/schedules/every_minute_report").status_code == 200,
                what="the code-declared schedule",
            )
            code = httpx.get(url2 + "/schedules/every_minute_report").json()
            assert code["source"] == "code" and code["timezone"] == BERLIN
    finally:
        for w in workers:
            w.terminate()
            w.wait(30)
