"""The drill report kit: what a fault drill observed, computed in SQL from jobs, job_attempts and
the effects the drill task records (one test_executions row per run: start, and end if it got
there), so duplicates and concurrency are measured from what handlers did, not from jobq's
own bookkeeping.

Sizes are small for `make test`; JOBQ_DRILL_FULL=1 makes them bigger (so does JOBQ_DRILL_JOBS,
which `make drills` sets).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.helpers import start_worker_process

FULL = os.environ.get("JOBQ_DRILL_FULL", "") not in ("", "0") or "JOBQ_DRILL_JOBS" in os.environ
REPORT = os.environ.get("JOBQ_DRILL_REPORT")  # a JSON-lines file to append results to
FINAL = ("succeeded", "failed", "cancelled")


def size(small: int, full: int) -> int:
    """`small` in make test, `full` under JOBQ_DRILL_FULL."""
    return full if FULL else small


@dataclass
class DrillReport:
    """What a drill observed (the table in docs/operations.md)."""

    drill: str
    accepted: int
    succeeded: int
    failed: int
    failed_without_running: int  # failed jobs whose handler never started: must be 0
    lost: int  # accepted jobs not in a final state at the end: must be 0
    duplicate_executions: int  # runs beyond the first of a job (counted)
    concurrent_executions: int  # pairs of runs of one job that overlapped: must be 0
    concurrent_attempts: int  # the same, from jobq's attempt rows: must be 0
    seconds: float

    def assert_safe(self, *, failed: int = 0, duplicates: int | None = 0) -> None:
        """0 lost, 0 concurrent, 0 failed-without-running; `failed` handler failures and at
        most `duplicates` duplicate runs (None: any, the at-least-once price of a kill)."""
        assert self.lost == 0, self
        assert self.concurrent_executions == 0 and self.concurrent_attempts == 0, self
        assert self.failed_without_running == 0, self
        assert self.failed == failed, self
        assert self.succeeded == self.accepted - failed, self
        if duplicates is not None:
            assert self.duplicate_executions <= duplicates, self


_COUNTS = """
WITH acc AS (SELECT DISTINCT unnest(%(ids)s::uuid[]) AS id),
     runs AS (SELECT job_id, count(*) AS n FROM test_executions
              WHERE job_id IN (SELECT id FROM acc) GROUP BY job_id)
SELECT count(*),
       count(*) FILTER (WHERE j.status = 'succeeded'),
       count(*) FILTER (WHERE j.status = 'failed'),
       count(*) FILTER (WHERE j.status = 'failed' AND coalesce(runs.n, 0) = 0),
       count(*) FILTER (WHERE j.status IS NULL OR j.status NOT IN ('succeeded', 'failed',
                                                                   'cancelled')),
       coalesce(sum(greatest(runs.n - 1, 0)), 0)
FROM acc LEFT JOIN jobs j ON j.id = acc.id LEFT JOIN runs ON runs.job_id = acc.id
"""

# Two runs of one job overlap when each started before the other ended. A run that never
# recorded its end (its process was killed) ended before the next one started: the next
# claim waits for the lease, which the dead process could no longer renew.
_CONCURRENT_RUNS = """
SELECT count(*) FROM test_executions a JOIN test_executions b
  ON a.job_id = b.job_id AND a.id < b.id
WHERE a.job_id = ANY(%(ids)s::uuid[])
  AND a.finished_at IS NOT NULL AND b.finished_at IS NOT NULL
  AND a.started_at < b.finished_at AND b.started_at < a.finished_at
"""

_CONCURRENT_ATTEMPTS = """
SELECT count(*) FROM job_attempts a JOIN job_attempts b
  ON a.job_id = b.job_id AND a.id < b.id
WHERE a.job_id = ANY(%(ids)s::uuid[])
  AND a.started_at IS NOT NULL AND b.started_at IS NOT NULL
  AND a.started_at < b.finished_at AND b.started_at < a.finished_at
"""


def report(conn: Any, drill: str, accepted: Iterable[str], started: float) -> DrillReport:
    """Count what happened to `accepted` (SQL), print it as `DRILL {json}` and append it to
    JOBQ_DRILL_REPORT if set."""
    params = {"ids": list(accepted)}
    with conn.cursor() as cur:
        cur.execute(_COUNTS, params)
        total, ok, failed, unrun, lost, dups = cur.fetchone()
        cur.execute(_CONCURRENT_RUNS, params)
        runs = cur.fetchone()[0]
        cur.execute(_CONCURRENT_ATTEMPTS, params)
        attempts = cur.fetchone()[0]
    result = DrillReport(
        drill=drill,
        accepted=int(total),
        succeeded=int(ok),
        failed=int(failed),
        failed_without_running=int(unrun),
        lost=int(lost),
        duplicate_executions=int(dups),
        concurrent_executions=int(runs),
        concurrent_attempts=int(attempts),
        seconds=round(time.monotonic() - started, 1),
    )
    print(f"\nDRILL {json.dumps(asdict(result))}")
    if REPORT:
        with open(REPORT, "a") as fh:
            fh.write(json.dumps(asdict(result)) + "\n")
    return result


def all_final(conn: Any, accepted: Iterable[str]) -> bool:
    """True once every accepted job is succeeded, failed or cancelled."""
    ids = list(accepted)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status = ANY(%s)",
            (ids, list(FINAL)),
        )
        return bool(cur.fetchone()[0] == len(set(ids)))


def count(conn: Any, sql: str, *args: Any) -> int:
    """The single integer `sql` returns."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return int(cur.fetchone()[0])


def submit_batch(
    api: Any, n: int, sleep: float = 0.05, task: str = "record", **fields: Any
) -> set[str]:
    """Submit n jobs through POST /jobs/batch (100 per call); their ids."""
    ids: set[str] = set()
    for start in range(0, n, 100):
        job = {"task": task, "payload": {"sleep": sleep}, **fields}
        resp = api.post("/jobs/batch", json={"jobs": [job] * min(100, n - start)})
        assert resp.status_code in (200, 201, 207), resp.text
        ids |= {item["job"]["id"] for item in resp.json()["items"]}
    return ids


def submit(api: Any, body: dict[str, Any]) -> str:
    """One POST /jobs that must be accepted; the job id."""
    resp = api.post("/jobs", json=body)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def worker_processes(tmp_path: Path) -> Iterator[Any]:
    """The body of a `workers` fixture: start(settings, **env) starts a worker process; all
    are killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(settings: Any, **extra: str) -> subprocess.Popen[bytes]:
        proc = start_worker_process(settings, tmp_path / f"w{len(procs)}.log", **extra)
        procs.append(proc)
        return proc

    start.procs = procs  # type: ignore[attr-defined]
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
