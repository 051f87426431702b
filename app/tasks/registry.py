"""Register plain functions as tasks and validate payloads against their models."""

from __future__ import annotations

import importlib
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from app.errors import InvalidInput, JobqError

Handler = Callable[[Any, "JobContext"], Any]


@dataclass
class JobContext:
    """What a running handler knows about its job; `cancelled` is set on timeout or shutdown."""

    job_id: uuid.UUID
    task: str
    attempt: int
    max_attempts: int
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now will not be retried."""
        return self.attempt >= self.max_attempts


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its handler, optional payload model and timeout."""

    name: str
    handler: Handler
    payload_model: type[BaseModel] | None = None
    timeout_seconds: float | None = None

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

    def register(
        self,
        name: str,
        *,
        payload_model: type[BaseModel] | None = None,
        timeout_seconds: float | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator: register `handler(payload, ctx)` under `name`."""

        def decorate(handler: Handler) -> Handler:
            with self._lock:
                existing = self._tasks.get(name)
                if existing is not None and existing.handler is not handler:
                    raise JobqError(f"task {name!r} is registered twice")
                self._tasks[name] = TaskSpec(name, handler, payload_model, timeout_seconds)
            return handler

        return decorate

    def get(self, name: str) -> TaskSpec:
        """The task named `name`, or InvalidInput naming the field."""
        spec = self._tasks.get(name)
        if spec is None:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise InvalidInput(f"unknown task {name!r}; known tasks: {known}", field="task")
        return spec

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
        for module in ["app.tasks.builtin", *modules]:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise JobqError(f"cannot import task module {module!r}: {exc}") from exc


REGISTRY = Registry()
task = REGISTRY.register
