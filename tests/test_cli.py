"""The jobq client commands against a live API on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx

from tests.helpers import ROOT, settings_env, wait_for


def _jobq(settings: Any, api_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=settings_env(settings, JOBQ_API_URL=api_url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_submit_wait_status_list_stats(settings: Any, live_api: str, worker_factory: Any) -> None:
    worker_factory()
    done = _jobq(
        settings, live_api, "submit", "flaky", "--payload", '{"failures": 1}', "--wait", "--json"
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert "queued" in done.stderr or "retrying" in done.stderr  # progress went to stderr

    status = _jobq(settings, live_api, "status", job["id"])
    assert status.returncode == 0 and job["id"] in status.stdout and "succeeded" in status.stdout
    listed = _jobq(settings, live_api, "list", "--task", "flaky", "--json")
    assert [j["id"] for j in json.loads(listed.stdout)["items"]] == [job["id"]]
    stats = _jobq(settings, live_api, "stats")
    assert stats.returncode == 0 and "succeeded 1" in stats.stdout


def test_failed_wait_exits_1_and_errors_are_readable(
    settings: Any, live_api: str, worker_factory: Any
) -> None:
    worker_factory()
    failed = _jobq(settings, live_api, "submit", "permanent", "--wait")
    assert failed.returncode == 1 and "failed" in failed.stdout
    unknown = _jobq(settings, live_api, "submit", "nope")
    assert unknown.returncode == 1 and "422 invalid_input" in unknown.stderr
    bad_json = _jobq(settings, live_api, "submit", "echo", "--payload", "{oops")
    assert bad_json.returncode == 1 and "--payload is not JSON" in bad_json.stderr
    not_object = _jobq(settings, live_api, "submit", "echo", "--payload", "[1]")
    assert not_object.returncode == 1 and "--payload must be a JSON object" in not_object.stderr
    missing = _jobq(settings, live_api, "status", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1 and "404" in missing.stderr
    down = _jobq(settings, "http://127.0.0.1:9", "stats")
    assert down.returncode == 1 and "cannot reach the API" in down.stderr


def test_api_workers_flag_rejects_bad_counts(capsys: Any) -> None:
    import pytest

    from app.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["api", "--workers", "3"]).workers == 3
    for bad in ("0", "-2", "65", "two"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["api", "--workers", bad])
        assert exc.value.code == 2
        assert "--workers must be" in capsys.readouterr().err


def test_schedules_and_workflows_from_the_shell(
    settings: Any, live_api: str, worker_factory: Any
) -> None:
    created = _jobq(
        settings,
        live_api,
        "schedules",
        "create",
        "tidy",
        "echo",
        "--cron",
        "0 4 * * *",
        "--tz",
        "Europe/Berlin",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["timezone"] == "Europe/Berlin"
    disabled = _jobq(settings, live_api, "schedules", "disable", "tidy")
    assert disabled.returncode == 0 and "disabled" in disabled.stdout
    # Run now works on a disabled schedule too, and its job runs.
    ran = _jobq(settings, live_api, "schedules", "run", "tidy", "--json")
    assert ran.returncode == 0, ran.stderr
    run_id = json.loads(ran.stdout)["job_id"]
    worker_factory()

    def run_finished() -> bool:
        return httpx.get(f"{live_api}/jobs/{run_id}").json()["status"] == "succeeded"

    wait_for(run_finished, what="the schedule's run-now job")
    listed = _jobq(settings, live_api, "schedules", "list")
    assert "tidy" in listed.stdout and "0 4 * * *" in listed.stdout
    assert _jobq(settings, live_api, "schedules", "delete", "tidy").returncode == 0

    parent = json.loads(_jobq(settings, live_api, "submit", "echo", "--json").stdout)
    child = _jobq(
        settings,
        live_api,
        "submit",
        "fan_in",
        "--depends-on",
        parent["id"],
        "--unique-key",
        "cli",
        "--wait",
        "--json",
    )
    assert child.returncode == 0, child.stderr
    flow = _jobq(settings, live_api, "workflow", parent["id"])
    assert flow.returncode == 0 and "succeeded" in flow.stdout.splitlines()[0]


def test_pause_resume_limits_and_controls(settings: Any, live_api: str) -> None:
    paused = _jobq(settings, live_api, "pause", "task", "record", "--json")
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["paused"] is True
    limits = _jobq(
        settings, live_api, "limits", "record", "--max-concurrency", "3", "--rate-limit", "5/s"
    )
    assert limits.returncode == 0 and "max_concurrency 3" in limits.stdout
    assert "rate 5/1s" in limits.stdout and "paused" in limits.stdout
    cleared = _jobq(settings, live_api, "limits", "record", "--rate-limit", "none", "--json")
    assert json.loads(cleared.stdout)["rate_limit"] is None
    assert json.loads(cleared.stdout)["max_concurrency"] == 3
    queue = _jobq(settings, live_api, "pause", "queue", "default")
    assert queue.returncode == 0 and "queue" in queue.stdout
    _jobq(settings, live_api, "resume", "queue", "default")
    listed = _jobq(settings, live_api, "controls", "--json")
    found = {(c["scope"], c["name"]): c["paused"] for c in json.loads(listed.stdout)["controls"]}
    assert found == {("task", "record"): True, ("queue", "default"): False}
    bad = _jobq(settings, live_api, "limits", "record", "--rate-limit", "lots")
    assert bad.returncode == 1 and "rate_limit" in bad.stderr
    bad_number = _jobq(settings, live_api, "limits", "record", "--max-concurrency", "x")
    assert bad_number.returncode == 1 and "--max-concurrency" in bad_number.stderr
