"""Input checks PostgreSQL would otherwise turn into 500s: NUL bytes, non-finite numbers, depth."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime

from app.errors import InvalidInput


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


# A string PostgreSQL can store: text columns reject NUL bytes.
SafeStr = Annotated[str, AfterValidator(_no_nul)]


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("is out of range once converted to UTC") from exc


# A timestamp with a timezone, normalised to UTC (PostgreSQL rejects offsets beyond ±16 h).
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


def check_payload(payload: Any, *, max_depth: int) -> None:
    """Reject what JSONB cannot hold (NUL, NaN, Infinity) and nesting deeper than max_depth."""
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
                if "\x00" in key:
                    raise InvalidInput(f"{path}: a key contains a NUL character", field=path)
                stack.append((item, f"{path}.{key}", depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}.{i}", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str) and "\x00" in value:
            raise InvalidInput(f"{path}: contains a NUL character", field=path)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"{path}: numbers must be finite", field=path)
