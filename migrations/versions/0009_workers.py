"""the workers table (worker heartbeats for the dashboard) and an index for the dashboard's
charts over recent attempts

Revision ID: 0009
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("running", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("interval_seconds", sa.Integer(), nullable=False),
        sa.Column("started_at", _TS, server_default=sa.func.now(), nullable=False),
        sa.Column("last_seen_at", _TS, server_default=sa.func.now(), nullable=False),
        sa.Column("stopped_at", _TS, nullable=True),
    )
    op.create_index("ix_workers_last_seen", "workers", ["last_seen_at"])
    # Throughput, failure and duration charts read the last hour or day of attempts.
    op.create_index("ix_job_attempts_finished", "job_attempts", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_job_attempts_finished", table_name="job_attempts")
    op.drop_index("ix_workers_last_seen", table_name="workers")
    op.drop_table("workers")
