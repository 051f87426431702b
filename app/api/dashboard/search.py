"""The job search behind the jobs list and the DLQ page: filters from the URL, a bounded
page of matches, and how many jobs each bulk action would touch."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from app.api.dashboard.common import BULK_LIMIT, PAGE_SIZE, jobs, page
from app.errors import InvalidInput
from app.jobs.bulk import ACTIONS
from app.jobs.filters import PRIORITIES, JobFilter


def search_page(
    request: Request,
    template: str,
    *,
    cursor: str | None,
    title: str,
    forced: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A search results page (the jobs list, and the DLQ with `dead_lettered` forced)."""
    params = {**request.query_params, **(forced or {})}
    error = None
    try:
        search = JobFilter.parse(params)
        items, next_cursor = jobs(request).search(search, limit=PAGE_SIZE, cursor=cursor or None)
        counts = {
            action: jobs(request).count(search, up_to=BULK_LIMIT + 1, action=action)
            for action in ACTIONS
        }
    except InvalidInput as exc:
        search, items, next_cursor, counts = JobFilter(), [], None, {}
        error = f"{exc.field}: {exc.message}" if exc.field else exc.message
    raw = {k: v for k, v in request.query_params.items() if k not in ("cursor", "msg")}
    return page(
        request,
        template,
        title=title,
        jobs=items,
        search=search,
        raw=raw,
        priorities=PRIORITIES,
        counts=counts,
        bulk_limit=BULK_LIMIT,
        error=error,
        next_url=search.query(cursor=next_cursor) if next_cursor else None,
        **context,
    )
