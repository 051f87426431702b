"""Readiness and queue depths, sampled in the background so that no request waits on SQS.

A request thread that waits on a hung SQS (readiness, /stats, /metrics, the dashboard) is a
thread every other route needs: about fifty of them used to stall the whole API. The sampler
asks PostgreSQL and SQS every JOBQ_PROBE_INTERVAL_SECONDS on its own thread, with its own SQS
client (JOBQ_PROBE_TIMEOUT_SECONDS per call, one attempt); requests read the latest sample.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from app.config import Settings
from app.db import translate_db_errors
from app.errors import JobqError
from app.loops import PeriodicLoop
from app.observability.stats import (
    oldest_queued_age,
    probe_queues,
    queue_name,
    sampled_gauges,
)
from app.sqs.queue import SqsQueue, make_sqs_client

NOT_YET = "not probed yet"


@dataclass(frozen=True)
class Sample:
    """One probe of both dependencies: "ok" or why not, and what was read."""

    database: str
    sqs: str
    depths: dict[str, Any]
    oldest_queued_age: float | None = None
    taken_at: float = field(default_factory=time.monotonic)

    @property
    def age(self) -> float:
        """Seconds since the probe finished."""
        return time.monotonic() - self.taken_at


class DependencySampler(PeriodicLoop):
    """Probes PostgreSQL and SQS on its own thread; `latest()` never blocks.

    A sample older than `stale_after` counts as failed: the probe itself is stuck (e.g. on a
    PostgreSQL pool that has no free connection), so the API is not ready either.
    """

    def __init__(self, engine: Engine, sqs: SqsQueue, *, interval: float, timeout: float) -> None:
        super().__init__("jobq-probe", interval=interval)
        self._engine = engine
        self._sqs = sqs
        # A pass makes a few calls, each bounded by `timeout` (connecting to PostgreSQL too).
        self.stale_after = 3 * interval + 4 * timeout
        self._latest: Sample | None = None
        self._first = threading.Event()

    def tick(self) -> float | None:
        """Probe once and publish the sample."""
        self._latest = self.probe()
        self._first.set()
        return None

    def probe(self) -> Sample:
        """Ask both dependencies now (in the calling thread)."""
        database, oldest = self._probe_database()
        depths, sqs = probe_queues(self._sqs)
        return Sample(database, sqs, depths, oldest)

    def _probe_database(self) -> tuple[str, float | None]:
        try:
            with translate_db_errors(), self._engine.connect() as conn:
                return "ok", oldest_queued_age(conn)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return _reason(exc), None

    def wait_first(self, timeout: float) -> bool:
        """Wait up to `timeout` for the first sample (start-up only); True once there is one."""
        return self._first.wait(timeout)

    def latest(self) -> Sample | None:
        """The newest sample, or None before the first probe finished."""
        return self._latest

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body of /readyz) from the latest sample."""
        sample = self._latest
        if sample is None:
            checks = {"database": NOT_YET, "sqs": NOT_YET}
            age = None
        else:
            age = round(sample.age, 3)
            checks = {"database": sample.database, "sqs": sample.sqs}
            if sample.age > self.stale_after:
                checks = {name: f"no probe finished for {sample.age:.0f} s" for name in checks}
        ready = all(v == "ok" for v in checks.values())
        body = {
            "status": "ready" if ready else "unavailable",
            "checks": checks,
            "sampled_age_seconds": age,
        }
        return ready, body

    def depths(self) -> dict[str, Any]:
        """Queue depths for /stats and the dashboard (None per queue until SQS answered)."""
        sample = self._latest
        if sample is None:
            return {
                "queues": {
                    queue_name(u): None for u in self._sqs.distinct_urls(self._sqs.queue_names())
                },
                "dlq": None,
                "queues_sampled_age_seconds": None,
            }
        return {**sample.depths, "queues_sampled_age_seconds": round(sample.age, 3)}

    def gauges(self) -> dict[str, dict[tuple[str, ...], float]]:
        """The sampled Prometheus gauges (empty before the first probe)."""
        sample = self._latest
        if sample is None:
            return {}
        return sampled_gauges(sample.depths, sample.oldest_queued_age)


def build_sampler(settings: Settings, engine: Engine, sqs: SqsQueue) -> DependencySampler:
    """A sampler with its own short-timeout, single-attempt SQS client on the same queues."""
    timeout = settings.probe_timeout_seconds
    client = make_sqs_client(settings, read_timeout=timeout, connect_timeout=timeout, retries=0)
    probe_sqs = SqsQueue(client, sqs.url, sqs.dlq_url, sqs.priority_urls, sqs.named_urls)
    return DependencySampler(
        engine, probe_sqs, interval=settings.probe_interval_seconds, timeout=timeout
    )


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, JobqError) else type(exc).__name__
