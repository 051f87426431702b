"""Register plain functions as tasks and validate payloads against their models."""

from __future__ import annotations

import importlib
import inspect
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from app.errors import InvalidInput, JobqError, Snooze
from app.tasks.retry import Backoff, as_backoff

Handler = Callable[[Any, "JobContext"], Any]
# Modules of the tasks every process has, imported before JOBQ_TASK_MODULES.
BUILTIN_MODULES = ("app.tasks.builtin", "app.tasks.http")
PRIORITIES = ("high", "default", "low")


class Cancellation(threading.Event):
    """`ctx.cancelled`: an Event, that also records why it was set and runs callbacks then
    (the worker uses them to cancel an async handler's task or kill an isolated runner).

    It also knows the instant (time.monotonic()) by which the worker must have renewed the
    job's lease: past it, `is_set()` and `wait()` report a `lease_lost` cancellation by
    themselves, so a handler that checks before each side effect does none after its worker
    lost the job, even when the worker's own threads were paused (SIGSTOP, a frozen VM) and
    nothing else has run yet.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None  # cancelled, timeout, shutdown or lease_lost
        self._callbacks: list[Callable[[], None]] = []
        self._guard = threading.Lock()
        self._deadline: float | None = None

    def expire_at(self, deadline: float | None) -> None:
        """Count as cancelled (`lease_lost`) from this time.monotonic() instant on."""
        self._deadline = deadline

    def _expired(self) -> bool:
        deadline = self._deadline
        if deadline is not None and time.monotonic() >= deadline:
            self.cancel("lease_lost")
            return True
        return False

    def is_set(self) -> bool:
        """True once cancelled (for any reason), or once the lease deadline passed."""
        return super().is_set() or self._expired()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until cancelled or `timeout` passes; wakes at the lease deadline too."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            deadline = self._deadline
            limits = [x - time.monotonic() for x in (end, deadline) if x is not None]
            if super().wait(max(0.0, min(limits)) if limits else None):
                return True
            if self._expired():
                return True
            if end is not None and time.monotonic() >= end:
                return False

    def cancel(self, reason: str) -> None:
        """Set the event (the first reason wins) and run the callbacks once."""
        with self._guard:
            if super().is_set():
                return
            self.reason = reason
            callbacks, self._callbacks = self._callbacks, []
            super().set()
        for callback in callbacks:
            callback()

    def set(self) -> None:
        """Plain set() counts as a cancellation request."""
        self.cancel("cancelled")

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run `callback` when cancelled (at once if already)."""
        with self._guard:
            if not super().is_set():
                self._callbacks.append(callback)
                return
        callback()


@dataclass
class JobContext:
    """What a running handler knows about its job.

    `attempt` counts runs of this job's handler (1 on the first); `failures` how many of them
    failed. `cancelled` is set when the job is cancelled, times out, its worker shuts down or
    loses the job's lease: a handler that checks it can stop early.
    """

    job_id: uuid.UUID
    task: str
    attempt: int
    max_attempts: int
    failures: int = 0
    cancelled: Cancellation = field(default_factory=Cancellation)

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now will not be retried."""
        return self.failures + 1 >= self.max_attempts

    def snooze(self, seconds: float, reason: str = "snoozed") -> NoReturn:
        """Run this job again in `seconds` without using an attempt (raises Snooze)."""
        raise Snooze(seconds, reason)


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its handler, payload model, timeout and retry policy."""

    name: str
    handler: Handler
    payload_model: type[BaseModel] | None = None
    timeout_seconds: float | None = None
    max_attempts: int | None = None
    backoff: Backoff | None = None
    description: str = ""
    priority: str | None = None  # the jobs' priority when a submit names none

    @property
    def is_async(self) -> bool:
        """True for an `async def` handler (run on the worker's event loop)."""
        return inspect.iscoroutinefunction(self.handler)

    def parse_payload(self, payload: dict[str, Any]) -> Any:
        """The payload as the handler receives it (a model instance when one is declared)."""
        if self.payload_model is None:
            return payload
        return self.payload_model.model_validate(payload)


class Registry:
    """Task name -> TaskSpec, filled by the @task decorator and JOBQ_TASK_MODULES."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskSpec] = {}
        self._lock = threading.Lock()
        self.modules: list[str] = []  # user modules loaded (an isolated runner loads them too)

    def register(
        self,
        name: str,
        *,
        payload_model: type[BaseModel] | None = None,
        timeout_seconds: float | None = None,
        max_attempts: int | None = None,
        backoff: Backoff | float | Sequence[float] | None = None,
        description: str | None = None,
        priority: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator: register `handler(payload, ctx)` (sync or `async def`) under `name`."""
        if max_attempts is not None and max_attempts < 1:
            raise JobqError(f"task {name!r}: max_attempts must be at least 1")
        if priority not in (None, *PRIORITIES):
            raise JobqError(f"task {name!r}: priority must be one of {', '.join(PRIORITIES)}")
        schedule = as_backoff(backoff)

        def decorate(handler: Handler) -> Handler:
            doc = description if description is not None else (handler.__doc__ or "")
            spec = TaskSpec(
                name,
                handler,
                payload_model,
                timeout_seconds,
                max_attempts,
                schedule,
                doc.strip().splitlines()[0] if doc.strip() else "",
                priority,
            )
            with self._lock:
                existing = self._tasks.get(name)
                if existing is not None and existing.handler is not handler:
                    raise JobqError(f"task {name!r} is registered twice")
                self._tasks[name] = spec
            return handler

        return decorate

    def get(self, name: str) -> TaskSpec:
        """The task named `name`, or InvalidInput naming the field."""
        spec = self._tasks.get(name)
        if spec is None:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise InvalidInput(f"unknown task {name!r}; known tasks: {known}", field="task")
        return spec

    def specs(self) -> list[TaskSpec]:
        """Every registered task, by name."""
        with self._lock:
            return [self._tasks[n] for n in sorted(self._tasks)]

    def names(self) -> list[str]:
        """Registered task names, sorted."""
        return sorted(self._tasks)

    def validate_payload(self, name: str, payload: dict[str, Any]) -> None:
        """Raise InvalidInput (field `payload...`) if the payload does not fit the task's model."""
        spec = self.get(name)
        if spec.payload_model is None:
            return
        try:
            spec.payload_model.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(p) for p in ("payload", *first["loc"]))
            raise InvalidInput(f"{path}: {first['msg']}", field=path) from exc

    def load_modules(self, modules: list[str]) -> None:
        """Import user task modules so their @task decorators run."""
        self.modules = list(dict.fromkeys([*self.modules, *modules]))
        for module in [*BUILTIN_MODULES, *modules]:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise JobqError(
                    f"cannot import task module {module!r} (JOBQ_TASK_MODULES; is it on "
                    f"PYTHONPATH?): {exc}"
                ) from exc


REGISTRY = Registry()
task = REGISTRY.register
