"""What every dashboard page shares: templates and their filters, who is looking (and may
they act), the CSRF token, and the page size limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from app.api.dashboard import csrf, svg
from app.auth.keys import Principal
from app.jobs.service import JobService
from app.jobs.states import JobStatus

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
REFRESH_SECONDS = 5  # live regions re-fetch this often (htmx), the rest of the page stays
PAGE_SIZE = 50  # rows per list page: with capped fields, a page's bytes stay bounded
BULK_LIMIT = 10_000  # jobs one bulk action may touch (the confirmation says when more match)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _relative(seconds: float) -> str:
    past, s = seconds >= 0, abs(seconds)
    if s < 60:
        text = f"{s:.0f} s"
    elif s < 3600:
        text = f"{s / 60:.0f} min"
    elif s < 172800:
        text = f"{s / 3600:.1f} h"
    else:
        text = f"{s / 86400:.0f} d"
    return f"{text} ago" if past else f"in {text}"


def when(value: datetime | str | None) -> Markup:
    """<time> with the relative time shown and the exact UTC instant on hover."""
    if not value:
        return Markup("")
    if isinstance(value, str):  # an ISO string from the stats snapshot
        value = datetime.fromisoformat(value)
    exact = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    ago = _relative((datetime.now(UTC) - value).total_seconds())
    return Markup(f'<time datetime="{value.isoformat()}" title="{exact}">{escape(ago)}</time>')


def span(start: datetime | None, end: datetime | None) -> str:
    """The time between two instants, human-sized ("" when either is missing)."""
    if start is None or end is None:
        return ""
    return svg.seconds(max(0.0, (end - start).total_seconds()))


templates.env.filters.update(pretty=_pretty, when=when, seconds=svg.seconds)
templates.env.globals.update(span=span, p50_p95=svg.p50_p95)


def jobs(request: Request) -> JobService:
    """The app's job service."""
    return request.app.state.jobs  # type: ignore[no-any-return]


def principal(request: Request) -> Principal | None:
    """The caller's key (None when JOBQ_AUTH=disabled)."""
    return getattr(request.state, "principal", None)


def can_act(request: Request) -> bool:
    """Submit keys (and everyone with auth disabled) see action buttons; read-only keys
    do not (and the auth middleware refuses their POSTs: 403)."""
    who = principal(request)
    return who is None or who.scope == "submit"


def actor(request: Request) -> str:
    """Who to name in the audit log."""
    who = principal(request)
    return f"key:{who.name}" if who else "anonymous (JOBQ_AUTH=disabled)"


def page(request: Request, name: str, **context: Any) -> HTMLResponse:
    """Render a page with what base.html needs, and set the CSRF cookie if it is new."""
    context.setdefault("refresh", REFRESH_SECONDS)
    context.setdefault("message", request.query_params.get("msg"))
    context.update(
        statuses=[s.value for s in JobStatus],
        can_act=can_act(request),
        csrf_field=csrf.FIELD,
        csrf_token=csrf.token(request),
        who=principal(request),
    )
    response = templates.TemplateResponse(request, name, context)
    csrf.remember(request, response)
    return response
