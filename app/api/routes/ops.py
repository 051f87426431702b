"""GET /metrics, GET /stats and GET /tasks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.errors import NotFound
from app.jobs.schemas import ErrorBody
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


_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (404, 503)}


@router.get("/tasks", responses=_ERRORS)
def tasks(request: Request) -> dict[str, Any]:
    """The task catalogue: every task workers published (or built in), its payload JSON
    Schema, defaults, whether a worker runs it now, and each live version (docs/api.md)."""
    views = request.app.state.jobs.catalogue.views()
    return {"tasks": [views[name].public() for name in sorted(views)]}


@router.get("/tasks/{name}", responses=_ERRORS)
def one_task(request: Request, name: str) -> dict[str, Any]:
    """One task of the catalogue (404 if unknown)."""
    views = request.app.state.jobs.catalogue.views()
    if name not in views:
        raise NotFound(f"task {name!r} not found", field="name")
    result: dict[str, Any] = views[name].public()
    return result
