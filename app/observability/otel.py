"""Optional OpenTelemetry spans for submit, publish and execute (off unless configured).

Turned on by OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_TRACES_EXPORTER=console) with the `otel`
extra installed. The job's stored trace id joins the worker's execute span to the trace the
HTTP request started, across SQS.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("jobq.tracing")
_tracer: Any = None


def configure(provider: Any = None) -> bool:
    """Install a tracer (the given provider, or one built from OTEL_* variables); True if on."""
    global _tracer
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the `otel` extra is not installed")
        return False
    if provider is None:
        exporter = _exporter_from_env()
        if exporter is None:
            return False
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    _tracer = provider.get_tracer("jobq")
    return True


def disable() -> None:
    """Turn tracing off again (tests)."""
    global _tracer
    _tracer = None


def _exporter_from_env() -> Any:
    if os.environ.get("OTEL_TRACES_EXPORTER") == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("install jobq[otel] for the OTLP exporter; tracing stays off")
            return None
        return OTLPSpanExporter()
    return None


@contextmanager
def span(name: str, trace_id: str | None = None, **attributes: Any) -> Iterator[Any]:
    """A span when tracing is on (joined to `trace_id` if given), else nothing at all."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    context = None
    if trace_id and len(trace_id) == 32:
        try:
            parent = SpanContext(
                trace_id=int(trace_id, 16),
                span_id=random.getrandbits(64) or 1,
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        except ValueError:
            context = None
    attrs = {f"jobq.{k}": str(v) for k, v in attributes.items() if v is not None}
    with _tracer.start_as_current_span(name, context=context, attributes=attrs) as current:
        yield current
