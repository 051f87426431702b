"""The dashboard's chart data, from PostgreSQL: attempts finished per minute or hour (split
into succeeded, failed and other), and per-task p50/p95 of run time and queue wait."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

# Attempt outcomes that count as failures in the charts (snoozed and cancelled do not).
FAILED_OUTCOMES = ("failed", "timed_out", "crashed", "lost", "interrupted")
SPANS = {"minute": 60, "hour": 24}  # buckets shown: the last hour by minute, day by hour
TASKS_SHOWN = 20
# Percentiles come from at most the newest this many attempts (and jobs) of the window: the
# page costs the same on a busy day as on a quiet one.
SAMPLE = 20_000

_THROUGHPUT = text(
    """WITH buckets AS (
           SELECT generate_series(
                      date_trunc(:unit, now()) - make_interval(secs => :step * (:n - 1)),
                      date_trunc(:unit, now()), make_interval(secs => :step)) AS b
       ), counts AS (
           SELECT date_trunc(:unit, finished_at) AS b,
                  count(*) FILTER (WHERE outcome = 'succeeded') AS ok,
                  count(*) FILTER (WHERE outcome = ANY(CAST(:failed AS text[]))) AS failed,
                  count(*) AS total
           FROM job_attempts
           WHERE finished_at >= date_trunc(:unit, now()) - make_interval(secs => :step * (:n - 1))
           GROUP BY 1
       )
       SELECT buckets.b, coalesce(ok, 0), coalesce(failed, 0), coalesce(total, 0)
       FROM buckets LEFT JOIN counts USING (b) ORDER BY buckets.b"""
)


def throughput(session: Session, unit: str) -> list[dict[str, Any]]:
    """[{at, ok, failed, other}] for each of the last SPANS[unit] minutes or hours."""
    if unit not in SPANS:
        raise ValueError(f"unit must be one of {sorted(SPANS)}")
    step = 60 if unit == "minute" else 3600
    rows = session.execute(
        _THROUGHPUT,
        {"unit": unit, "step": step, "n": SPANS[unit], "failed": list(FAILED_OUTCOMES)},
    ).all()
    return [
        {"at": b, "ok": int(ok), "failed": int(failed), "other": int(total - ok - failed)}
        for b, ok, failed, total in rows
    ]


_LATENCY = text(
    """WITH runs AS (
           SELECT j.task, extract(epoch FROM a.finished_at - a.started_at) AS run
           FROM (SELECT job_id, started_at, finished_at FROM job_attempts
                 WHERE finished_at >= now() - make_interval(secs => :secs)
                   AND started_at IS NOT NULL
                 ORDER BY finished_at DESC LIMIT :sample) a
           JOIN jobs j ON j.id = a.job_id
       ), waits AS (
           SELECT task,
                  greatest(0, extract(epoch FROM started_at - coalesce(run_at, created_at))) AS wait
           FROM (SELECT task, started_at, run_at, created_at FROM jobs
                 WHERE created_at >= now() - make_interval(secs => :secs)
                 ORDER BY created_at DESC LIMIT :sample) recent
           WHERE started_at IS NOT NULL
       ), r AS (
           SELECT task, count(*) AS n,
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY run) AS run_p50,
                  percentile_cont(0.95) WITHIN GROUP (ORDER BY run) AS run_p95
           FROM runs GROUP BY task
       ), w AS (
           SELECT task,
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY wait) AS wait_p50,
                  percentile_cont(0.95) WITHIN GROUP (ORDER BY wait) AS wait_p95
           FROM waits GROUP BY task
       )
       SELECT r.task, r.n, r.run_p50, r.run_p95, w.wait_p50, w.wait_p95
       FROM r LEFT JOIN w USING (task) ORDER BY r.n DESC, r.task LIMIT :tasks"""
)


def latency(session: Session, *, hours: float = 1.0) -> list[dict[str, Any]]:
    """Per task (the busiest TASKS_SHOWN): attempts, run time and queue wait p50/p95 in
    seconds, over the last `hours` (wait: first start minus when the job became due), from
    the newest SAMPLE attempts and jobs of that window."""
    params = {"secs": hours * 3600, "tasks": TASKS_SHOWN, "sample": SAMPLE}
    rows = session.execute(_LATENCY, params).all()
    keys = ("task", "attempts", "run_p50", "run_p95", "wait_p50", "wait_p95")
    return [
        {
            k: (float(v) if isinstance(v, int | float) and k != "attempts" else v)
            for k, v in zip(keys, row, strict=True)
        }
        for row in rows
    ]
