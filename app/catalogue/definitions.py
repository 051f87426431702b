"""A task's definition as the catalogue holds it, built from a worker's TaskSpec."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from app.tasks.registry import TaskSpec

# A task without a payload model accepts any JSON object (what POST /jobs already requires).
ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class Definition:
    """What a worker version says about one task: payload JSON Schema and job defaults."""

    name: str
    payload_schema: dict[str, Any]
    timeout_seconds: float | None = None
    max_attempts: int | None = None
    backoff: dict[str, Any] | None = None
    priority: str | None = None
    queue: str | None = None  # the named queue its jobs go to (@task(queue=...))
    description: str = ""
    worker_version: str = ""
    # Set when read back from PostgreSQL (None for a definition this process registered).
    first_seen_at: datetime | None = field(default=None, compare=False)
    seen_at: datetime | None = field(default=None, compare=False)
    live: bool = field(default=True, compare=False)

    @cached_property  # on the submit path: computed once per definition, not per request
    def digest(self) -> str:
        """sha256 of what the definition says (not of who said it or when)."""
        body = {
            k: v
            for k, v in asdict(self).items()
            if k not in {"worker_version", "first_seen_at", "seen_at", "live"}
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def public(self) -> dict[str, Any]:
        """The JSON GET /tasks shows for this definition."""
        return {
            "payload_schema": self.payload_schema,
            "timeout_seconds": self.timeout_seconds,
            "max_attempts": self.max_attempts,
            "backoff": self.backoff,
            "priority": self.priority,
            "queue": self.queue,
            "description": self.description,
            "worker_version": self.worker_version,
            "first_seen_at": self.first_seen_at.isoformat() if self.first_seen_at else None,
            "seen_at": self.seen_at.isoformat() if self.seen_at else None,
            "live": self.live,
        }


def from_spec(spec: TaskSpec, worker_version: str = "") -> Definition:
    """The catalogue definition of a registered task (its payload model's JSON Schema)."""
    schema = ANY_OBJECT if spec.payload_model is None else spec.payload_model.model_json_schema()
    return Definition(
        name=spec.name,
        payload_schema=schema,
        timeout_seconds=spec.timeout_seconds,
        max_attempts=spec.max_attempts,
        backoff=spec.backoff.describe() if spec.backoff is not None else None,
        priority=spec.priority,
        queue=spec.queue,
        description=spec.description,
        worker_version=worker_version,
    )
