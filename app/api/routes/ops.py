"""GET /metrics and GET /stats."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.observability import metrics
from app.observability.stats import snapshot

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics(request: Request) -> Response:
    """Prometheus exposition: counters, histograms, and sampled queue gauges."""
    body, content_type = metrics.render(request.app.state.sampled_metrics)
    return Response(body, media_type=content_type)


@router.get("/stats")
def stats(request: Request, minutes: int = 15) -> dict[str, Any]:
    """Counts by status and task, queue and DLQ depths (from the background probe, with its
    age), throughput, recent failures (long errors cut: `truncated_fields`)."""
    app = request.app
    return snapshot(
        app.state.runtime.sessions,
        app.state.sampler.depths(),
        minutes=max(1, min(minutes, 24 * 60)),
        error_max_chars=app.state.runtime.settings.list_field_max_bytes,
    )
