"""Input checks PostgreSQL would otherwise turn into 500s: NUL bytes, lone surrogates,
non-finite numbers, depth. The one place every string field, filter and payload is checked
(the fast path, the routes and the batch path all validate through these)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime

from app.errors import InvalidInput


def text_problem(value: str) -> str | None:
    """Why PostgreSQL could not store `value` as text, or None if it can.

    NUL: text columns and JSONB reject it. A lone UTF-16 surrogate ("\\ud800" in JSON):
    valid JSON escape, but not a character; it cannot be encoded as UTF-8 at all.
    """
    if "\x00" in value:
        return "must not contain NUL (\\u0000) characters"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "must not contain lone UTF-16 surrogates (\\ud800-\\udfff)"
    return None


def _storable(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# A string PostgreSQL can store: no NUL, no lone surrogate.
SafeStr = Annotated[str, AfterValidator(_storable)]


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("is out of range once converted to UTC") from exc


# A timestamp with a timezone, normalised to UTC (PostgreSQL rejects offsets beyond ±16 h).
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


def check_payload(payload: Any, *, max_depth: int) -> None:
    """Reject what JSONB cannot hold (NUL, lone surrogates, NaN, Infinity) in keys and values,
    and nesting deeper than max_depth."""
    stack: list[tuple[Any, str, int]] = [(payload, "payload", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > max_depth:
            raise InvalidInput(
                f"{path}: nested deeper than {max_depth} levels (JOBQ_MAX_PAYLOAD_DEPTH)",
                field="payload",
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if (problem := text_problem(key)) is not None:
                    # The key itself may be unprintable: name the object that holds it.
                    raise InvalidInput(f"{path}: a key {problem}", field=path)
                stack.append((item, f"{path}.{key}", depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}.{i}", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str) and (problem := text_problem(value)) is not None:
            raise InvalidInput(f"{path}: {problem}", field=path)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"{path}: numbers must be finite", field=path)
