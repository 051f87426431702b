"""`jobq dlq list` filters like a redrive and needs only PostgreSQL; `jobq dlq redrive` runs
failed jobs again."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.helpers import ROOT, settings_env, wait_for_status


def _jobq(settings: Any, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=settings_env(settings, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dlq_list_honours_every_filter_without_sqs_settings(db: Any, settings: Any) -> None:
    with db.cursor() as cur:
        cur.execute(
            """INSERT INTO jobs (id, task, status, max_attempts, finished_at, dead_lettered_at,
                                 error) VALUES
               ('00000000-0000-0000-0000-000000000001', 'a', 'failed', 3,
                '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 'old, dead-lettered'),
               ('00000000-0000-0000-0000-000000000002', 'a', 'failed', 3,
                '2026-06-01T00:00:00Z', NULL, 'new, permanent'),
               ('00000000-0000-0000-0000-000000000003', 'b', 'failed', 3,
                '2026-06-01T00:00:00Z', NULL, 'other task'),
               ('00000000-0000-0000-0000-000000000004', 'a', 'succeeded', 3,
                '2026-06-01T00:00:00Z', NULL, NULL)"""
        )

    def listed(*flags: str) -> list[str]:
        done = _jobq(settings, "dlq", "list", "--json", *flags, SQS_QUEUE_URL="")
        assert done.returncode == 0, done.stderr
        return [j["id"][-1] for j in json.loads(done.stdout.splitlines()[-1])]

    assert sorted(listed()) == ["1", "2", "3"]
    assert sorted(listed("--task", "a")) == ["1", "2"]
    assert listed("--task", "a", "--since", "2026-03-01T00:00:00Z") == ["2"]
    assert listed("--task", "a", "--until", "2026-03-01T00:00:00Z") == ["1"]
    assert listed("--dead-lettered-only") == ["1"]


def test_cli_dlq_list_and_redrive(api: Any, settings: Any, worker_factory: Any) -> None:
    worker_factory()
    job = api.post("/jobs", json={"task": "permanent"}).json()
    wait_for_status(api, job["id"], "failed")

    listed = _jobq(settings, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [j["id"] for j in json.loads(listed.stdout.splitlines()[-1])] == [job["id"]]
    redriven = _jobq(settings, "dlq", "redrive", "--task", "permanent", "--json")
    assert redriven.returncode == 0, redriven.stderr
    assert json.loads(redriven.stdout.splitlines()[-1])["redriven"] == 1
    wait_for_status(api, job["id"], "failed")  # ran again (and failed again)
    assert len(api.get(f"/jobs/{job['id']}/attempts").json()) == 2
    naive = _jobq(settings, "dlq", "redrive", "--since", "2030-01-01T00:00:00")
    assert naive.returncode == 1 and "--since" in naive.stderr
