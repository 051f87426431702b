"""The catalogue as a submitting process sees it: cached definitions and compiled validators.

Which definitions a submit must satisfy (the rolling-deploy rule, docs/tasks.md):
- every *live* definition of the task (published by a worker within `live_seconds`): during a
  rolling deploy any running version may pick the job up, so the payload must suit them all;
- with no live definition (no worker running the task right now), the newest one: the job is
  accepted and waits queued until a worker that has the task starts;
- a task no worker ever published, but registered in this process (the built-ins, which ship
  with every image), by its local definition.
Job defaults (timeout, attempts, priority, queue) come from the newest definition that applies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema_rs

from app.catalogue.definitions import Definition
from app.errors import InvalidInput, JobqError

log = logging.getLogger("jobq.catalogue")

Load = Callable[[], list[Definition]]


@dataclass(frozen=True)
class TaskView:
    """One task as submits see it: the definitions a payload must satisfy, newest first."""

    name: str
    definitions: tuple[Definition, ...]

    @property
    def newest(self) -> Definition:
        """The definition whose defaults new jobs get."""
        return self.definitions[0]

    @property
    def live(self) -> bool:
        """True if some worker published this task within the live window."""
        return any(d.live and d.seen_at is not None for d in self.definitions)

    def public(self) -> dict[str, Any]:
        """The JSON GET /tasks shows for this task."""
        newest = self.newest
        return {
            "name": self.name,
            "description": newest.description,
            "live": self.live,
            "builtin": newest.seen_at is None,
            **{
                k: v
                for k, v in newest.public().items()
                if k in {"timeout_seconds", "max_attempts", "backoff", "priority", "queue"}
            },
            "payload_schema": newest.payload_schema,
            "versions": [d.public() for d in self.definitions],
        }


def _field_path(error: Any) -> str:
    path = ["payload", *(str(p) for p in error.instance_path)]
    kind = error.kind
    # "required" and "additionalProperties" fail on the object: name the field itself.
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        path.append(str(kind.property))
    elif isinstance(kind, jsonschema_rs.ValidationErrorKind.AdditionalProperties):
        extra = list(getattr(kind, "unexpected", []) or [])
        if extra:
            path.append(str(extra[0]))
    return ".".join(path)


def choose(stored: list[Definition], local: list[Definition]) -> dict[str, TaskView]:
    """Task name -> the definitions that apply (see the module docstring)."""
    by_name: dict[str, list[Definition]] = {}
    for d in stored:  # newest first per task
        by_name.setdefault(d.name, []).append(d)
    views: dict[str, TaskView] = {}
    for name, defs in by_name.items():
        live = [d for d in defs if d.live]
        views[name] = TaskView(name, tuple(live or defs[:1]))
    for d in local:
        views.setdefault(d.name, TaskView(d.name, (d,)))
    return views


class Catalogue:
    """Cached task views, reloaded when older than `max_age` (or at once, at most every
    `unknown_retry` seconds, for a task it does not know: a worker may have just started)."""

    def __init__(
        self,
        load: Load | None,
        local: Callable[[], list[Definition]],
        *,
        max_age: float = 10.0,
        unknown_retry: float = 1.0,
        local_check: Callable[[str, Mapping[str, Any]], None] | None = None,
    ) -> None:
        self._load = load
        self._local = local
        # Tasks whose code this process has (the built-ins) are also checked by their pydantic
        # model: its custom validators are not in the JSON Schema.
        self._local_check = local_check
        self._max_age = max_age
        self._unknown_retry = unknown_retry
        self._views: dict[str, TaskView] | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()
        self._validators: dict[str, Any] = {}  # digest -> compiled validator

    def replace(self, stored: list[Definition]) -> None:
        """Use these stored definitions (plus this process's own) from now on."""
        views = choose(stored, self._local())
        with self._lock:
            self._views, self._loaded_at = views, time.monotonic()

    def refresh(self, load: Load | None = None) -> None:
        """Reload now (raises what the loader raises)."""
        loader = load or self._load
        self.replace(loader() if loader is not None else [])

    def _age(self) -> float:
        return time.monotonic() - self._loaded_at if self._views is not None else float("inf")

    def views(self, load: Load | None = None) -> dict[str, TaskView]:
        """Every task, reloading first if the cache is stale."""
        if self._age() > self._max_age:
            self._reload(load)
        assert self._views is not None
        return self._views

    def _reload(self, load: Load | None) -> None:
        try:
            self.refresh(load)
        except JobqError:
            if self._views is None:
                raise
            # Keep serving the last catalogue while PostgreSQL is away.
            log.warning("task catalogue reload failed; using the cached one", exc_info=True)

    def get(self, name: str, load: Load | None = None) -> TaskView:
        """The task, or InvalidInput (field `task`) listing the known ones."""
        view = self.views(load).get(name)
        if view is None and self._age() > self._unknown_retry:
            self._reload(load)
            view = self.views(load).get(name)
        if view is None:
            known = ", ".join(sorted(self.views(load))) or "none"
            raise InvalidInput(f"unknown task {name!r}; known tasks: {known}", field="task")
        return view

    def validate(self, name: str, payload: Mapping[str, Any], load: Load | None = None) -> TaskView:
        """The task, once the payload satisfies every definition that applies; else
        InvalidInput naming `payload.<field>`."""
        return self.check(self.get(name, load), payload)

    def check(self, view: TaskView, payload: Mapping[str, Any]) -> TaskView:
        """`view`, once the payload satisfies every definition that applies (validate())."""
        for definition in view.definitions:
            error = next(iter(self._validator(definition).iter_errors(payload)), None)
            if error is not None:
                path = _field_path(error)
                raise InvalidInput(f"{path}: {error.message}", field=path)
        if self._local_check is not None:
            self._local_check(view.name, payload)
        return view

    def _validator(self, definition: Definition) -> Any:
        digest = definition.digest
        validator = self._validators.get(digest)
        if validator is None:
            try:
                validator = jsonschema_rs.validator_for(definition.payload_schema)
            except Exception as exc:  # noqa: BLE001 - a schema the validator cannot compile
                log.warning("task %r: unusable payload schema: %s", definition.name, exc)
                validator = jsonschema_rs.validator_for({})
            self._validators[digest] = validator
        return validator
