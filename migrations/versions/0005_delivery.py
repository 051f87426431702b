"""delivery semantics owned by jobq: failures and crashes counted apart from runs, attempt
series, DLQ redeliveries, stored tracebacks, and the dispatcher's scan of unpublished retries

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ZERO = sa.text("0")


def upgrade() -> None:
    # attempts = handler runs started (the attempt number, and the fence of every write);
    # failures = runs that failed (what max_attempts limits); crashes = runs lost with their
    # worker; redeliveries = times the DLQ consumer sent a never-run job back to its queue.
    op.add_column("jobs", sa.Column("failures", sa.Integer(), server_default=_ZERO, nullable=False))
    op.add_column("jobs", sa.Column("crashes", sa.Integer(), server_default=_ZERO, nullable=False))
    op.add_column(
        "jobs", sa.Column("redeliveries", sa.Integer(), server_default=_ZERO, nullable=False)
    )
    op.add_column(
        "jobs", sa.Column("series", sa.Integer(), server_default=sa.text("1"), nullable=False)
    )
    op.execute("UPDATE jobs SET failures = attempts WHERE status IN ('failed', 'retrying')")
    op.add_column("job_attempts", sa.Column("traceback", sa.Text(), nullable=True))
    op.add_column(
        "job_attempts",
        sa.Column("series", sa.Integer(), server_default=sa.text("1"), nullable=False),
    )
    # Retries are fresh deliveries now: the dispatcher also sends retrying jobs whose message
    # is not confirmed (a long backoff held in PostgreSQL, or a failed send).
    op.drop_index("ix_jobs_unpublished", table_name="jobs")
    op.create_index(
        "ix_jobs_unpublished",
        "jobs",
        ["updated_at"],
        postgresql_where=sa.text("status IN ('queued', 'retrying') AND published_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_unpublished", table_name="jobs")
    op.create_index(
        "ix_jobs_unpublished",
        "jobs",
        ["updated_at"],
        postgresql_where=sa.text("status = 'queued' AND published_at IS NULL"),
    )
    op.drop_column("job_attempts", "series")
    op.drop_column("job_attempts", "traceback")
    for column in ("series", "redeliveries", "crashes", "failures"):
        op.drop_column("jobs", column)
