"""Liveness and readiness probes: neither waits on a dependency."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (answered on the event loop: no thread, no dependency)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """PostgreSQL and SQS both answered the latest background probe, which is recent; 503
    naming what failed otherwise (`sampled_age_seconds`: how old that probe is)."""
    ready, body = request.app.state.sampler.readiness()
    return JSONResponse(body, status_code=200 if ready else 503)
