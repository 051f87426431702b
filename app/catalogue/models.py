"""The task_catalogue table (migration 0006)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Float, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class CatalogueRow(Base):
    """One task definition as some worker version publishes it."""

    __tablename__ = "task_catalogue"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    # sha256 of the definition: workers of one version share a row, two versions do not.
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    payload_schema: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    timeout_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_attempts: Mapped[int | None] = mapped_column(Integer, nullable=True)
    backoff: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    priority: Mapped[str | None] = mapped_column(String(16), nullable=True)
    queue: Mapped[str | None] = mapped_column(String(64), nullable=True)
    description: Mapped[str] = mapped_column(Text, server_default="", nullable=False)
    worker_version: Mapped[str] = mapped_column(String(200), server_default="", nullable=False)
    first_seen_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    seen_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
