"""The guards every transition is built from: status lists taken from the transitions table."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from app.jobs.states import (
    JobStatus,
    sources,
)

S = JobStatus
# Every transition runs on an ORM session or on a Core connection (the worker's hot path).
Db = Session | Connection


# The hot statements find their rows through the primary key only. `(status ...) IS TRUE` is
# not an index condition, so it keeps the planner off ix_jobs_status_created: on statistics
# that predate a fresh backlog it believes few rows are unfinished and would otherwise scan
# every one of them for each batch (10-17 ms instead of 0.5 ms with 5,000 queued jobs,
# measured with EXPLAIN ANALYZE on a freshly loaded backlog).
BY_ID = "j.id = ANY(CAST(:ids AS uuid[]))"


def _allowed(targets: Sequence[JobStatus], wanted: Sequence[JobStatus] | None) -> list[str]:
    """`wanted` (default: every source of targets[0]), each checked against the table."""
    chosen = sorted(wanted if wanted is not None else sources(targets[0]))
    for target in targets:
        bad = [s for s in chosen if s not in sources(target)]
        if bad:
            raise ValueError(f"{bad} -> {target} is not in the transitions table")
    return [s.value for s in chosen]


def _in(target: JobStatus) -> str:
    """SQL list of the statuses `target` may be entered from, from the transitions table."""
    return "(" + ", ".join(f"'{s}'" for s in _allowed([target], None)) + ")"


def _from(wanted: Sequence[JobStatus], *targets: JobStatus) -> str:
    """SQL list of `wanted`, each allowed (by the table) to enter every one of `targets`."""
    return "(" + ", ".join(f"'{s}'" for s in _allowed(targets, wanted)) + ")"


_NOW = text("now()")


def as_uuid(value: Any) -> uuid.UUID:
    """`value` as a UUID (drivers return str or UUID)."""
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
