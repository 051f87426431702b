"""Operational statistics from PostgreSQL and SQS (GET /stats, the dashboard, metrics)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session, sessionmaker

from app.db import translate_db_errors
from app.errors import JobqError
from app.sqs.queue import SqsQueue

_DEPTH_ATTRIBUTES = {
    "visible": "ApproximateNumberOfMessages",
    "in_flight": "ApproximateNumberOfMessagesNotVisible",
    "delayed": "ApproximateNumberOfMessagesDelayed",
}


def queue_name(url: str) -> str:
    """The queue's name: the last part of its URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def probe_queues(sqs: SqsQueue) -> tuple[dict[str, Any], str]:
    """Approximate message counts per queue and for the DLQ (None where SQS did not answer),
    and "ok" or why the main queue did not answer (as the readiness check did: the others
    only add depths).

    After the first failure the other queues are not asked: an SQS that hangs would make each
    of them wait for the client's timeout too.
    """
    queues: dict[str, Any] = {queue_name(url): None for url in sqs.distinct_urls()}
    depths: dict[str, Any] = {"queues": queues, "dlq": None}
    urls = [sqs.url] + [u for u in sqs.distinct_urls() if u != sqs.url]
    for url in urls + ([sqs.dlq_url] if sqs.dlq_url else []):
        try:
            attrs = sqs.attributes(url)
        except JobqError as exc:
            return depths, exc.message if url == sqs.url else "ok"
        depth = {key: int(attrs.get(name, 0)) for key, name in _DEPTH_ATTRIBUTES.items()}
        if url == sqs.dlq_url:
            depths["dlq"] = depth
        else:
            queues[queue_name(url)] = depth
    return depths, "ok"


def job_stats(
    session: Session, *, minutes: int = 15, failures: int = 10, error_max_chars: int = 4096
) -> dict[str, Any]:
    """Counts by status and task, throughput per minute, oldest queued age, recent failures
    (errors cut to `error_max_chars` by PostgreSQL: a huge one is never loaded)."""
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
            """SELECT id, task, left(error, :chars), attempts, finished_at,
                      dead_lettered_at IS NOT NULL, char_length(error) > :chars
               FROM jobs WHERE status = 'failed' ORDER BY finished_at DESC NULLS LAST LIMIT :n"""
        ),
        {"n": failures, "chars": error_max_chars},
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
                "truncated_fields": ["error"] if r[6] else [],
            }
            for r in recent
        ],
    }


def snapshot(
    sessions: sessionmaker[Session],
    depths: dict[str, Any],
    *,
    minutes: int = 15,
    failures: int = 10,
    error_max_chars: int = 4096,
) -> dict[str, Any]:
    """What GET /stats and the dashboard's overview show: job stats plus queue depths (sampled
    in the background: `depths` is the latest sample, with its age)."""
    with translate_db_errors(), sessions() as session:
        data = job_stats(
            session, minutes=minutes, failures=failures, error_max_chars=error_max_chars
        )
    data.update(depths)
    return data


def sampled_gauges(
    depths: dict[str, Any], oldest_age: float | None
) -> dict[str, dict[tuple[str, ...], float]]:
    """Values for the cached Prometheus gauges, from one background sample."""
    out: dict[str, dict[tuple[str, ...], float]] = {
        "jobq_queue_depth": {},
        "jobq_queue_in_flight_messages": {},
    }
    for name, depth in depths.get("queues", {}).items():
        if depth is not None:
            out["jobq_queue_depth"][(name,)] = depth["visible"]
            out["jobq_queue_in_flight_messages"][(name,)] = depth["in_flight"]
    if depths.get("dlq") is not None:
        out["jobq_dlq_depth"] = {(): depths["dlq"]["visible"]}
    if oldest_age is not None:
        out["jobq_oldest_queued_job_age_seconds"] = {(): oldest_age}
    return out


def oldest_queued_age(session: Session | Connection) -> float:
    """Seconds the oldest queued job has waited since it became due."""
    age = session.execute(
        text(
            """SELECT extract(epoch FROM now() - min(greatest(updated_at, run_at)))
               FROM jobs WHERE status = 'queued'"""
        )
    ).scalar_one()
    return max(0.0, float(age or 0))


_BY_QUEUE = text(
    """SELECT queue, priority,
              count(*) FILTER (WHERE status = 'queued') AS queued,
              count(*) FILTER (WHERE status = 'running') AS running,
              count(*) FILTER (WHERE status = 'retrying') AS retrying,
              count(*) FILTER (WHERE status = 'scheduled') AS scheduled,
              extract(epoch FROM now() - min(greatest(updated_at, run_at))
                                      FILTER (WHERE status = 'queued')) AS oldest
       FROM jobs WHERE status IN ('queued', 'running', 'retrying', 'scheduled')
       GROUP BY queue, priority"""
)


def unfinished_by_route(session: Session) -> dict[tuple[str, str], dict[str, Any]]:
    """(named queue, priority) -> unfinished jobs by status and the oldest queued job's age
    (seconds)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in session.execute(_BY_QUEUE).mappings():
        values = dict(row)
        oldest = values.pop("oldest")
        route = (str(values.pop("queue")), str(values.pop("priority")))
        out[route] = {
            **{k: int(v) for k, v in values.items()},
            "oldest_age_seconds": max(0.0, float(oldest)) if oldest is not None else None,
        }
    return out
