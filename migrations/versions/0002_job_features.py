"""job features: scheduled status, priorities, run_at, cancellation, idempotency keys

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OLD_STATUSES = "('queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')"
NEW_STATUSES = "('scheduled', 'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')"


def upgrade() -> None:
    op.drop_constraint("ck_jobs_status", "jobs", type_="check")
    op.create_check_constraint("ck_jobs_status", "jobs", f"status IN {NEW_STATUSES}")
    op.add_column(
        "jobs", sa.Column("priority", sa.String(8), server_default="default", nullable=False)
    )
    op.create_check_constraint("ck_jobs_priority", "jobs", "priority IN ('high', 'default', 'low')")
    tz = sa.DateTime(timezone=True)
    op.add_column("jobs", sa.Column("run_at", tz, nullable=True))
    op.add_column("jobs", sa.Column("cancel_requested_at", tz, nullable=True))
    op.add_column("jobs", sa.Column("idempotency_key", sa.String(255), nullable=True))
    op.add_column("jobs", sa.Column("request_hash", sa.String(64), nullable=True))
    op.add_column("jobs", sa.Column("idempotency_expires_at", tz, nullable=True))
    op.create_index(
        "ux_jobs_idempotency_key",
        "jobs",
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_scheduled", "jobs", ["run_at"], postgresql_where=sa.text("status = 'scheduled'")
    )
    op.create_index(
        "ix_jobs_finished",
        "jobs",
        ["finished_at"],
        postgresql_where=sa.text("status IN ('succeeded', 'failed', 'cancelled')"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_finished", table_name="jobs")
    op.drop_index("ix_jobs_scheduled", table_name="jobs")
    op.drop_index("ux_jobs_idempotency_key", table_name="jobs")
    for column in (
        "idempotency_expires_at",
        "request_hash",
        "idempotency_key",
        "cancel_requested_at",
        "run_at",
    ):
        op.drop_column("jobs", column)
    op.drop_constraint("ck_jobs_priority", "jobs", type_="check")
    op.drop_column("jobs", "priority")
    op.execute("UPDATE jobs SET status = 'queued' WHERE status = 'scheduled'")
    op.drop_constraint("ck_jobs_status", "jobs", type_="check")
    op.create_check_constraint("ck_jobs_status", "jobs", f"status IN {OLD_STATUSES}")
