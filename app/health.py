"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.db import translate_db_errors
from app.errors import JobqError

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """PostgreSQL and SQS both answer; 503 naming what failed otherwise."""
    runtime = request.app.state.runtime
    checks: dict[str, str] = {}
    try:
        with translate_db_errors(), runtime.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["database"] = _reason(exc)
    try:
        runtime.sqs.ping()
        checks["sqs"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["sqs"] = _reason(exc)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, JobqError) else type(exc).__name__
