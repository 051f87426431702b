"""Every write of jobs.status: each is one guarded UPDATE ... RETURNING.

Each WHERE clause takes its statuses from the transitions table (app/jobs/states.py) through
`guards._in` / `guards._from`. Zero rows back means the transition was not allowed (a
duplicate delivery, a lost lease, a job already finished), so callers never act on a stale
view of a job. This package is the only place that writes `status`: attempts (the worker's
claim/finish/lease path), control (users and the dispatcher), workflow (children of parents).
"""

from app.jobs.transitions.attempts import (
    _CLAIM,
    _EXTEND_LEASES,
    _FINISH,
    Claimed,
    Finish,
    claim,
    claim_many,
    count_redelivery,
    extend_leases,
    fail_dead_lettered,
    finish,
    finish_many,
)
from app.jobs.transitions.control import (
    cancel,
    cancel_many,
    requeue,
    run_now,
    scheduled_to_queued,
)
from app.jobs.transitions.workflow import (
    Ready,
    cancel_orphan,
    cancel_workflow,
    queue_ready_child,
    settle_children,
)

__all__ = [
    "_CLAIM",
    "_EXTEND_LEASES",
    "_FINISH",
    "Claimed",
    "Finish",
    "Ready",
    "cancel",
    "cancel_many",
    "cancel_orphan",
    "cancel_workflow",
    "claim",
    "claim_many",
    "count_redelivery",
    "extend_leases",
    "fail_dead_lettered",
    "finish",
    "finish_many",
    "queue_ready_child",
    "requeue",
    "run_now",
    "scheduled_to_queued",
    "settle_children",
]
