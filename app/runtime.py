"""Wiring: build the engine, SQS queue and task registry from settings, once per process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import make_engine, make_session_factory
from app.errors import JobqError
from app.sqs.queue import SqsQueue, make_sqs_client
from app.tasks.registry import REGISTRY, Registry


@dataclass
class Runtime:
    """The shared parts every jobq process needs."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    sqs: SqsQueue
    registry: Registry

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()


def build_runtime(
    settings: Settings,
    *,
    pool_size: int = 10,
    sqs_client: Any = None,
    statement_timeout_ms: int = 0,
    load_tasks: bool = True,
) -> Runtime:
    """Connect-lazily versions of PostgreSQL and SQS, plus the loaded task registry.

    `load_tasks=False` (the API, the CLI): only the built-in tasks, never JOBQ_TASK_MODULES;
    such a process validates submits against the task catalogue workers publish.
    """
    if not settings.sqs_queue_url:
        raise JobqError("SQS_QUEUE_URL is not set", field="SQS_QUEUE_URL")
    engine = make_engine(
        settings.database_url,
        pool_size=pool_size,
        connect_timeout=settings.db_connect_timeout_seconds,
        statement_timeout_ms=statement_timeout_ms,
    )
    client = sqs_client or make_sqs_client(settings)
    REGISTRY.load_modules(settings.task_module_list if load_tasks else [])
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        sqs=SqsQueue(
            client,
            settings.sqs_queue_url,
            settings.sqs_dlq_url,
            settings.queue_urls,
            settings.named_queue_urls,
            calls_in_flight=settings.sqs_calls_in_flight,
        ),
        registry=REGISTRY,
    )
