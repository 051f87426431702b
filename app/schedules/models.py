"""The schedules table: what to submit, when, and when it last and next fires."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


def _ts(nullable: bool = True, default: bool = False) -> Any:
    return mapped_column(
        DateTime(timezone=True), nullable=nullable, server_default=func.now() if default else None
    )


class Schedule(Base):
    """A cron or interval schedule that submits one job of `task` per tick."""

    __tablename__ = "schedules"
    __table_args__ = (
        CheckConstraint(
            "(cron IS NULL) <> (interval_seconds IS NULL)", name="ck_schedules_one_rule"
        ),
        CheckConstraint("catch_up IN ('once', 'skip')", name="ck_schedules_catch_up"),
        UniqueConstraint("name", name="uq_schedules_name"),
        # The ticker's scan: enabled schedules coming due.
        Index("ix_schedules_due", "next_run_at", postgresql_where=text("enabled")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    cron: Mapped[str | None] = mapped_column(String(200), nullable=True)
    interval_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    timezone: Mapped[str] = mapped_column(String(64), server_default="UTC")
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    # Ticks missed while no ticker ran: 'once' submits one job (for the latest), 'skip' none.
    catch_up: Mapped[str] = mapped_column(String(8), server_default="once")
    # 'code' (declared by @task(schedule=...), upserted at start) or 'api' (POST /schedules).
    source: Mapped[str] = mapped_column(String(8), server_default="api")
    priority: Mapped[str] = mapped_column(String(8), server_default="default")
    next_run_at: Mapped[datetime | None] = _ts()
    last_run_at: Mapped[datetime | None] = _ts()
    last_job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    created_at: Mapped[datetime] = _ts(nullable=False, default=True)
    updated_at: Mapped[datetime] = _ts(nullable=False, default=True)
