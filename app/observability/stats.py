"""Operational statistics from PostgreSQL and SQS (GET /stats, the dashboard, metrics)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.errors import JobqError
from app.queue import SqsQueue

_DEPTH_ATTRIBUTES = {
    "visible": "ApproximateNumberOfMessages",
    "in_flight": "ApproximateNumberOfMessagesNotVisible",
    "delayed": "ApproximateNumberOfMessagesDelayed",
}


def queue_name(url: str) -> str:
    """The queue's name: the last part of its URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def queue_depths(sqs: SqsQueue) -> dict[str, Any]:
    """Approximate message counts per queue and for the DLQ (None where SQS did not answer)."""
    queues: dict[str, Any] = {}
    for url in sqs.distinct_urls():
        queues[queue_name(url)] = _depth(sqs, url)
    dlq_url = sqs.dlq_url
    return {"queues": queues, "dlq": _depth(sqs, dlq_url) if dlq_url else None}


def _depth(sqs: SqsQueue, url: str) -> dict[str, int] | None:
    try:
        attrs = sqs.attributes(url)
    except JobqError:
        return None
    return {key: int(attrs.get(name, 0)) for key, name in _DEPTH_ATTRIBUTES.items()}


def job_stats(session: Session, *, minutes: int = 15, failures: int = 10) -> dict[str, Any]:
    """Counts by status and task, throughput per minute, oldest queued age, recent failures."""
    rows_by_status = session.execute(text("SELECT status, count(*) FROM jobs GROUP BY 1")).all()
    by_status: dict[str, int] = {str(s): int(c) for s, c in rows_by_status}
    by_task: dict[str, dict[str, int]] = {}
    for task, status, count in session.execute(
        text("SELECT task, status, count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1")
    ):
        by_task.setdefault(task, {})[status] = count
    rows = session.execute(
        text(
            """SELECT date_trunc('minute', finished_at) AS minute, status, count(*)
               FROM jobs WHERE finished_at >= now() - make_interval(mins => :m)
               GROUP BY 1, 2 ORDER BY 1"""
        ),
        {"m": minutes},
    ).all()
    per_minute: dict[str, dict[str, int]] = {}
    for minute, status, count in rows:
        per_minute.setdefault(minute.isoformat(), {})[status] = count
    finished = sum(sum(v.values()) for v in per_minute.values())
    recent = session.execute(
        text(
            """SELECT id, task, error, attempts, finished_at, dead_lettered_at IS NOT NULL
               FROM jobs WHERE status = 'failed' ORDER BY finished_at DESC NULLS LAST LIMIT :n"""
        ),
        {"n": failures},
    ).all()
    return {
        "by_status": by_status,
        "by_task": by_task,
        "throughput": {
            "window_minutes": minutes,
            "finished": finished,
            "per_minute": round(finished / minutes, 2),
            "by_minute": per_minute,
        },
        "oldest_queued_age_seconds": oldest_queued_age(session),
        "recent_failures": [
            {
                "id": str(r[0]),
                "task": r[1],
                "error": r[2],
                "attempts": r[3],
                "finished_at": r[4].isoformat() if r[4] else None,
                "dead_lettered": bool(r[5]),
            }
            for r in recent
        ],
    }


def sampled_gauges(sqs: SqsQueue, session_factory: Any) -> dict[str, dict[tuple[str, ...], float]]:
    """Values for the cached Prometheus gauges."""
    depths = queue_depths(sqs)
    out: dict[str, dict[tuple[str, ...], float]] = {
        "jobq_queue_depth": {},
        "jobq_queue_in_flight_messages": {},
    }
    for name, depth in depths["queues"].items():
        if depth is not None:
            out["jobq_queue_depth"][(name,)] = depth["visible"]
            out["jobq_queue_in_flight_messages"][(name,)] = depth["in_flight"]
    if depths["dlq"] is not None:
        out["jobq_dlq_depth"] = {(): depths["dlq"]["visible"]}
    with session_factory() as session:
        out["jobq_oldest_queued_job_age_seconds"] = {(): oldest_queued_age(session)}
    return out


def oldest_queued_age(session: Session) -> float:
    """Seconds the oldest queued job has waited since it became due."""
    age = session.execute(
        text(
            """SELECT extract(epoch FROM now() - min(greatest(updated_at, run_at)))
               FROM jobs WHERE status = 'queued'"""
        )
    ).scalar_one()
    return max(0.0, float(age or 0))
