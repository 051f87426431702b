"""Prometheus metrics shared by the API and the worker.

Each process exposes its own /metrics (the API's route, the worker's JOBQ_METRICS_PORT). When
PROMETHEUS_MULTIPROC_DIR is set (several processes behind one port, e.g. uvicorn --workers),
values are aggregated across processes by prometheus-client's multiprocess mode.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

JOBS_CREATED = Counter("jobq_jobs_created_total", "Jobs accepted by the API", ["task"])
JOBS_FINISHED = Counter("jobq_jobs_finished_total", "Attempts that ended a job", ["task", "status"])
JOBS_RETRIED = Counter(
    "jobq_jobs_retried_total", "Attempts that failed and will be retried", ["task"]
)
JOBS_DEFERRED = Counter(
    "jobq_jobs_deferred_total",
    "Deliveries held back by flow control (paused, concurrency or rate limit)",
    ["reason"],
)
JOB_DURATION = Histogram(
    "jobq_job_duration_seconds", "Handler run time per attempt", ["task"], buckets=DURATION_BUCKETS
)
QUEUE_WAIT = Histogram(
    "jobq_job_queue_wait_seconds",
    "From enqueue (or run_at) to the first attempt's start",
    ["task"],
    buckets=DURATION_BUCKETS,
)
# Counted by the DLQ consumer as it settles (and deletes) each dead-lettered message: the DLQ
# itself stays near empty, so its depth cannot tell how many jobs reached it.
DLQ_ARRIVALS = Counter(
    "jobq_dlq_arrivals_total", "Dead-lettered messages the DLQ consumer settled and deleted"
)
DLQ_REDELIVERED = Counter(
    "jobq_dlq_redelivered_total",
    "Dead-lettered jobs that had not finished, sent back to their queue by the DLQ consumer",
)
# Counted by the reconciler (app/maintenance/reconciler.py): each one is a job whose SQS message
# had vanished (a purge, retention expiry, an emulator restarted), labelled by the job's status.
RECONCILED = Counter(
    "jobq_reconciled_total",
    "Jobs re-sent to SQS because their message was missing (reconciler)",
    ["status"],
)
IN_FLIGHT = Gauge(
    "jobq_jobs_in_flight", "Jobs this worker is running now", multiprocess_mode="livesum"
)
HTTP_REQUESTS = Counter("jobq_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "jobq_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class CachedGaugeCollector(Collector):
    """Gauges sampled from SQS/PostgreSQL by `sample`, at most once per `ttl` seconds."""

    def __init__(self, sample: Callable[[], dict[str, dict[tuple[str, ...], float]]], ttl: float):
        self._sample = sample
        self._ttl = ttl
        self._lock = threading.Lock()
        self._at = 0.0
        self._cached: dict[str, dict[tuple[str, ...], float]] = {}

    def _values(self) -> dict[str, dict[tuple[str, ...], float]]:
        with self._lock:
            if time.monotonic() - self._at >= self._ttl:
                try:
                    self._cached = self._sample()
                except Exception:  # noqa: BLE001 - a scrape must not fail because SQS is down
                    self._cached = {}
                self._at = time.monotonic()
            return self._cached

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the sampled gauges."""
        values = self._values()
        for name, (doc, labels) in SAMPLED.items():
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            for label_values, value in values.get(name, {}).items():
                family.add_metric(list(label_values), value)
            yield family


SAMPLED: dict[str, tuple[str, tuple[str, ...]]] = {
    "jobq_queue_depth": ("Visible messages per queue (sampled from SQS)", ("queue",)),
    "jobq_queue_in_flight_messages": ("Invisible (received) messages per queue", ("queue",)),
    "jobq_dlq_depth": ("Messages in the dead-letter queue (sampled from SQS)", ()),
    "jobq_oldest_queued_job_age_seconds": ("Age of the oldest queued job (PostgreSQL)", ()),
}


def registry() -> CollectorRegistry:
    """The registry to expose: per-process, or aggregated in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        aggregated = CollectorRegistry()
        multiprocess.MultiProcessCollector(aggregated)  # type: ignore[no-untyped-call]
        return aggregated
    return REGISTRY


def render(extra: Collector | None = None) -> tuple[bytes, str]:
    """The exposition text for /metrics."""
    reg = registry()
    body = generate_latest(reg)
    if extra is not None:
        one_off = CollectorRegistry()
        one_off.register(extra)
        body += generate_latest(one_off)
    return body, CONTENT_TYPE_LATEST


def serve_worker_metrics(port: int, host: str = "0.0.0.0", extra: Any = None) -> None:  # noqa: S104
    """Expose the worker's metrics on http://host:port/metrics in a daemon thread."""
    if extra is not None:
        REGISTRY.register(extra)
    start_http_server(port, addr=host, registry=registry())
