"""jobq's public surface: everything task authors and client code import.

    from jobq import task, JobContext, PermanentError, Retry, Snooze      # writing tasks
    from jobq import Client, AsyncClient, NotFound, WaitTimeout           # calling the API
    from jobq import enqueue                                              # in your transaction

`app/` and `worker/` are the service's machinery behind it; import only `jobq`.
"""

from typing import TYPE_CHECKING, Any

from app.errors import JobqError, PermanentError, Retry, RetryableError, Snooze, TaskTimeout
from app.jobs.callbacks import SIGNATURE_HEADER, verify_signature
from app.tasks.registry import JobContext, task
from app.tasks.retry import Exponential, Fixed, Schedule
from jobq.client import AsyncClient, Client
from jobq.errors import (
    ApiError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    Unreachable,
    WaitTimeout,
)
from jobq.flow import Flow, FlowRun, chain, group, job
from jobq.models import (
    Attempt,
    BatchItem,
    BatchResult,
    Control,
    CronSchedule,
    ItemError,
    Job,
    JobRequest,
    JobStatus,
    ListFilters,
    ScheduleOptions,
    SubmitOptions,
    Workflow,
    WorkflowEdge,
)

if TYPE_CHECKING:
    from jobq.transaction import Enqueued, enqueue


def __getattr__(name: str) -> Any:
    """`enqueue` and `Enqueued` load on first use: they need SQLAlchemy and the service's
    validation, which client-only code never imports."""
    if name in {"enqueue", "Enqueued"}:
        from jobq import transaction

        return getattr(transaction, name)
    raise AttributeError(f"module 'jobq' has no attribute {name!r}")


__all__ = [
    # Writing tasks (run by the worker), and their retry schedules.
    "Exponential",
    "Fixed",
    "Schedule",
    "JobContext",
    "JobqError",
    "PermanentError",
    "Retry",
    "RetryableError",
    "Snooze",
    "TaskTimeout",
    "task",
    # Receiving completion callbacks.
    "SIGNATURE_HEADER",
    "verify_signature",
    # Calling the API (jobq.client).
    "AsyncClient",
    "Client",
    "Attempt",
    "BatchItem",
    "BatchResult",
    "Control",
    "ItemError",
    "Job",
    "JobRequest",
    "JobStatus",
    "ListFilters",
    "SubmitOptions",
    # Flow control: workflows (jobq.flow) and schedules.
    "Flow",
    "FlowRun",
    "CronSchedule",
    "ScheduleOptions",
    "Workflow",
    "WorkflowEdge",
    "chain",
    "group",
    "job",
    # Enqueue inside your own database transaction (jobq.enqueue).
    "Enqueued",
    "enqueue",
    # The client's errors (jobq.errors), all ApiError.
    "ApiError",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "RateLimited",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "WaitTimeout",
]
