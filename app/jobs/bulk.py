"""Bulk actions on every job a search matches (retry, cancel, redrive from the DLQ), in
bounded batches, each its own transaction of guarded updates (app/jobs/transitions/)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db import translate_db_errors
from app.errors import InvalidInput
from app.jobs import transitions
from app.jobs.filters import JOBS, JobFilter
from app.jobs.states import CANCELLABLE_NOW, RETRYABLE_BY_USER, JobStatus

log = logging.getLogger("jobq.audit")

# action -> the statuses it applies to (what the confirmation counts).
ACTIONS: dict[str, frozenset[JobStatus]] = {
    "retry": RETRYABLE_BY_USER,
    "cancel": CANCELLABLE_NOW | {JobStatus.RUNNING},
    "redrive": frozenset({JobStatus.FAILED}),
}
BATCH = 500  # jobs per transaction: short row locks, bounded statements


@dataclass(frozen=True)
class BulkResult:
    """What a bulk action did."""

    action: str
    matched: int  # jobs selected for the action
    changed: int  # jobs the guarded updates changed (others moved on meanwhile)
    capped: bool  # the limit was reached: more jobs may match


def scope(action: str, search: JobFilter) -> tuple[JobFilter, list[str]]:
    """The search an action applies to (redrive: dead-lettered only) and its statuses."""
    if action not in ACTIONS:
        raise InvalidInput("action must be retry, cancel or redrive", field="action")
    if action == "redrive":
        search = replace(search, dead_lettered=True)
    wanted = sorted(s.value for s in ACTIONS[action])
    if search.status is not None:
        wanted = [s for s in wanted if s == search.status.value]
    return search, wanted


def count(session: Session, action: str, search: JobFilter, *, up_to: int) -> int:
    """How many jobs `action` would touch (at most `up_to`: the count is bounded too)."""
    search, wanted = scope(action, search)
    ids = (
        select(JOBS.c.id)
        .where(and_(JOBS.c.status.in_(wanted), *search.conditions()))
        .limit(up_to)
        .subquery()
    )
    return int(session.execute(select(func.count()).select_from(ids)).scalar_one())


def run(
    sessions: sessionmaker[Session],
    publish: Callable[[Sequence[Any]], None],
    action: str,
    search: JobFilter,
    *,
    actor: str,
    limit: int,
    batch: int = BATCH,
) -> BulkResult:
    """Apply `action` to up to `limit` matching jobs, `batch` per transaction (keyset on id),
    publishing re-enqueued jobs after each commit; audited in the log with the actor."""
    search, wanted = scope(action, search)
    matched = changed = 0
    after: uuid.UUID | None = None
    while matched < limit:
        with translate_db_errors(), sessions.begin() as session:
            conditions = [JOBS.c.status.in_(wanted), *search.conditions()]
            if after is not None:
                conditions.append(JOBS.c.id > after)
            ids = list(
                session.scalars(
                    select(JOBS.c.id)
                    .where(and_(*conditions))
                    .order_by(JOBS.c.id)
                    .limit(min(batch, limit - matched))
                )
            )
            if not ids:
                break
            after = ids[-1]
            matched += len(ids)
            if action == "cancel":
                changed += transitions.cancel_many(session, ids)
                requeued: list[Any] = []
            else:
                requeued = transitions.requeue(session, ids=ids, limit=len(ids))
                changed += len(requeued)
        publish(requeued)
    result = BulkResult(action, matched, changed, capped=matched >= limit)
    log.info(
        "dashboard bulk %s by %s: %d matched, %d changed",
        action,
        actor,
        matched,
        changed,
        extra={"actor": actor, "action": action, "filter": search.params(), **vars(result)},
    )
    return result
