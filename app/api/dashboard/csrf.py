"""CSRF protection for the dashboard's forms: a same-origin check plus a double-submit token.

Browsers re-send cached Basic credentials with any form post, from any site, so credentials
prove nothing about where a post came from. Every dashboard POST must (1) carry an Origin (or,
failing that, a Referer) naming this host, and (2) carry a `csrf_token` field equal to the
`jobq_csrf` cookie, which another site can neither read nor set (SameSite=Strict, HttpOnly).
The token is random per browser and needs no server state, so it works across API processes.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import parse_qsl, urlsplit

from fastapi import Request
from starlette.responses import Response

from app.errors import Forbidden

COOKIE = "jobq_csrf"
FIELD = "csrf_token"
_TOKEN_CHARS = 43  # secrets.token_urlsafe(32)


def token(request: Request) -> str:
    """This browser's token (its cookie's, or a new one that `remember` will set)."""
    current = request.cookies.get(COOKIE, "")
    if len(current) == _TOKEN_CHARS:
        return current
    fresh: str | None = getattr(request.state, "csrf_new", None)
    if fresh is None:
        fresh = secrets.token_urlsafe(32)
        request.state.csrf_new = fresh
    return fresh


def remember(request: Request, response: Response) -> None:
    """Set the cookie if this request minted a token."""
    fresh = getattr(request.state, "csrf_new", None)
    if fresh:
        response.set_cookie(
            COOKIE,
            fresh,
            path="/dashboard",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )


async def form(request: Request) -> dict[str, str]:
    """The fields of an urlencoded form post (the dashboard's forms post nothing else; the
    body is bounded by the API's body-size limit)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return {}
    body = (await request.body()).decode("utf-8", "replace")
    return dict(parse_qsl(body, keep_blank_values=False, max_num_fields=100))


def _same_origin(request: Request) -> bool:
    host = request.headers.get("host", "")
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null" or not host:
        return False
    # Host only, not scheme: behind a TLS-terminating load balancer the app sees http.
    return urlsplit(source).netloc.lower() == host.lower()


async def check(request: Request) -> None:
    """The dependency of every dashboard POST: Forbidden (403) unless same-origin with a
    matching token."""
    if not _same_origin(request):
        raise Forbidden("cross-origin form post refused (Origin must be this host)", field="Origin")
    sent = (await form(request)).get(FIELD)
    cookie = request.cookies.get(COOKIE, "")
    if not sent or not cookie or not hmac.compare_digest(sent.encode(), cookie.encode()):
        raise Forbidden("missing or wrong CSRF token: reload the page", field=FIELD)
