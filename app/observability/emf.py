"""Job metrics to CloudWatch as Embedded Metric Format (EMF) lines on stdout.

On ECS the awslogs driver already ships stdout to CloudWatch Logs, which turns every line that
carries an `_aws` member into CloudWatch metrics: no agent, sidecar or PutMetricData call. The
values come from the same Prometheus registry that /metrics serves, so both views agree.
Every `interval` seconds the exporter writes what changed: counter and histogram sum/count
increments since the last line (CloudWatch adds them up per period), gauges as they are.
Percentiles stay in Prometheus; CloudWatch gets sums and counts (so averages).
The lines are built by aws-embedded-metrics' serializer (limits, batching, validation).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from aws_embedded_metrics.exceptions import InvalidDimensionError
from aws_embedded_metrics.logger.metrics_context import MetricsContext
from aws_embedded_metrics.serializers.log_serializer import LogSerializer
from prometheus_client.metrics_core import Metric

from app.config import Settings
from app.loops import PeriodicLoop
from app.observability.metrics import registry

log = logging.getLogger("jobq.emf")

# The dimension every metric carries, so several stacks can share one namespace.
ENV_DIMENSION = "Environment"


@dataclass(frozen=True)
class Export:
    """How one Prometheus family reaches CloudWatch: its unit and its dimension sets."""

    unit: str
    # Label-name subsets, each one CloudWatch dimension set (with ENV_DIMENSION in front).
    # The subset without `task` gives the per-environment totals that alarms watch.
    dimensions: tuple[tuple[str, ...], ...]
    # Only these processes send it (None: all); an API's idle in-flight gauge would only
    # drag the workers' average down.
    services: frozenset[str] | None = None


EXPORTS: dict[str, Export] = {
    "jobq_jobs_created": Export("Count", (("task",), ())),
    "jobq_jobs_finished": Export("Count", (("task", "status"), ("status",))),
    "jobq_jobs_retried": Export("Count", (("task",), ())),
    "jobq_dlq_arrivals": Export("Count", ((),)),
    "jobq_job_duration_seconds": Export("Seconds", (("task",), ())),
    "jobq_job_queue_wait_seconds": Export("Seconds", (("task",), ())),
    "jobq_jobs_in_flight": Export("Count", ((),), services=frozenset({"worker"})),
}


def metric_names(family: str, kind: str) -> list[str]:
    """The CloudWatch metric names a family of this Prometheus type becomes."""
    if kind == "counter":
        return [f"{family}_total"]
    if kind == "histogram":
        return [f"{family}_sum", f"{family}_count"]
    return [family]


def cloudwatch_metrics() -> dict[str, Export]:
    """CloudWatch metric name -> its Export, for every exported family this process has."""
    return {
        name: EXPORTS[family.name]
        for family in registry().collect()
        if family.name in EXPORTS
        for name in metric_names(family.name, family.type)
    }


# (dimension sets, label values) -> {metric name: (value, unit)}
Batch = dict[
    tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, str], ...]], dict[str, tuple[float, str]]
]


class EmfExporter(PeriodicLoop):
    """Writes the registry's changes as EMF lines every `interval` seconds, and once at stop."""

    def __init__(
        self,
        *,
        namespace: str,
        environment: str,
        service: str,
        interval: float,
        write: Callable[[str], object] | None = None,
        collect: Callable[[], Iterable[Metric]] | None = None,
    ) -> None:
        super().__init__("jobq-emf", interval=interval, logger=log)
        self._namespace = namespace
        self._environment = environment
        self._exports = {
            name: export
            for name, export in EXPORTS.items()
            if export.services is None or service in export.services
        }
        self._write = write or _write_stdout
        self._collect = collect or (lambda: registry().collect())
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()

    def tick(self) -> float | None:
        """One flush; the next after `interval`."""
        self.flush()
        return None

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the loop, then write what changed since its last line."""
        done = super().stop(timeout)
        self.flush()
        return done

    def flush(self) -> int:
        """Write the changes since the previous flush; how many lines were written."""
        with self._lock:
            lines = self.lines(self._changes())
        for line in lines:
            self._write(line + "\n")
        return len(lines)

    def _changes(self) -> Batch:
        """Increments of counters and histogram sums/counts, gauge values, grouped by labels."""
        batch: Batch = {}
        for family in self._collect():
            export = self._exports.get(family.name)
            if export is None:
                continue
            wanted = set(metric_names(family.name, family.type))
            for sample in family.samples:
                if sample.name not in wanted:
                    continue  # _bucket and _created samples
                labels = tuple(sorted(sample.labels.items()))
                value = float(sample.value)
                if family.type != "gauge":
                    previous = self._last.get((sample.name, labels), 0.0)
                    self._last[(sample.name, labels)] = value
                    # A lower total means the counter restarted (a new process in multiprocess
                    # mode): everything it holds is new.
                    value = value - previous if value >= previous else value
                    if value == 0:
                        continue
                unit = "Count" if sample.name.endswith(("_count", "_total")) else export.unit
                batch.setdefault((export.dimensions, labels), {})[sample.name] = (value, unit)
        return batch

    def lines(self, batch: Batch) -> list[str]:
        """EMF lines: one per family group and label values (the serializer splits at 100)."""
        lines: list[str] = []
        for (dimension_sets, labels), values in batch.items():
            label_map = dict(labels)
            context = MetricsContext(namespace=self._namespace)
            try:
                context.set_dimensions(
                    [
                        {ENV_DIMENSION: self._environment, **{n: label_map[n] for n in names}}
                        for names in dimension_sets
                    ]
                )
            except InvalidDimensionError as exc:  # e.g. a non-ASCII task name
                log.warning("metrics for %s not sent to CloudWatch: %s", label_map, exc)
                continue
            for name, (value, unit) in values.items():
                context.put_metric(name, value, unit)
            lines.extend(LogSerializer.serialize(context))
        return lines


def _write_stdout(line: str) -> None:
    # One write per line, so log lines from other threads never land inside it.
    sys.stdout.write(line)
    sys.stdout.flush()


@contextlib.contextmanager
def exporting(settings: Settings, service: str | None) -> Iterator[EmfExporter | None]:
    """Run an EmfExporter for `service` (a jobq command) while the block runs, when
    JOBQ_EMF_INTERVAL_SECONDS is set; nothing for service None."""
    if service is None or not settings.emf_interval_seconds:
        yield None
        return
    exporter = EmfExporter(
        namespace=settings.emf_namespace,
        environment=settings.emf_environment,
        service=service,
        interval=settings.emf_interval_seconds,
    )
    exporter.start()
    try:
        yield exporter
    finally:
        exporter.stop()
