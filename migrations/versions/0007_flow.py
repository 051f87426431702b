"""flow control: cron schedules, unique jobs and workflows (jobs that wait for parents)

Revision ID: 0007
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OLD_STATUSES = "('scheduled', 'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')"
NEW_STATUSES = (
    "('waiting', 'scheduled', 'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')"
)
TZ = sa.DateTime(timezone=True)
# The predicate of ux_jobs_unique_key (app/jobs/models.py has the same text).
UNIQUE_HELD = (
    "unique_key IS NOT NULL AND (unique_until IS NOT NULL"
    " OR status NOT IN ('succeeded', 'failed', 'cancelled'))"
)


def upgrade() -> None:
    op.drop_constraint("ck_jobs_status", "jobs", type_="check")
    op.create_check_constraint("ck_jobs_status", "jobs", f"status IN {NEW_STATUSES}")
    # Unique jobs: one holder of a key while it is unfinished (unique_until NULL) or until
    # unique_until; the partial unique index decides under concurrent submits.
    op.add_column("jobs", sa.Column("unique_key", sa.String(255), nullable=True))
    op.add_column("jobs", sa.Column("unique_until", TZ, nullable=True))
    op.create_index(
        "ux_jobs_unique_key",
        "jobs",
        ["unique_key"],
        unique=True,
        postgresql_where=sa.text(UNIQUE_HELD),
    )
    # Cron schedules: one job per (schedule, tick).
    op.add_column("jobs", sa.Column("schedule_id", UUID(as_uuid=True), nullable=True))
    op.add_column("jobs", sa.Column("schedule_tick", TZ, nullable=True))
    op.create_index(
        "ux_jobs_schedule_tick",
        "jobs",
        ["schedule_id", "schedule_tick"],
        unique=True,
        postgresql_where=sa.text("schedule_id IS NOT NULL"),
    )
    # Workflows: a waiting job counts its unfinished parents.
    op.add_column("jobs", sa.Column("workflow_id", UUID(as_uuid=True), nullable=True))
    op.add_column("jobs", sa.Column("pending_parents", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("on_parent_failure", sa.String(8), nullable=True))
    op.add_column("jobs", sa.Column("parent_results", JSONB(), nullable=True))
    op.create_index(
        "ix_jobs_workflow",
        "jobs",
        ["workflow_id", "created_at"],
        postgresql_where=sa.text("workflow_id IS NOT NULL"),
    )
    op.create_table(
        "job_dependencies",
        sa.Column("child_id", UUID(as_uuid=True), nullable=False),
        sa.Column("parent_id", UUID(as_uuid=True), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        # Set once the parent's final status was applied to the child (exactly once per edge,
        # even if the parent is retried and finishes again).
        sa.Column("settled", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.ForeignKeyConstraint(["child_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("child_id", "parent_id"),
    )
    op.create_index("ix_job_dependencies_parent", "job_dependencies", ["parent_id"])
    op.create_table(
        "schedules",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("payload", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("cron", sa.String(200), nullable=True),
        sa.Column("interval_seconds", sa.Integer(), nullable=True),
        sa.Column("timezone", sa.String(64), server_default="UTC", nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("catch_up", sa.String(8), server_default="once", nullable=False),
        sa.Column("source", sa.String(8), server_default="api", nullable=False),
        sa.Column("priority", sa.String(8), server_default="default", nullable=False),
        sa.Column("next_run_at", TZ, nullable=True),
        sa.Column("last_run_at", TZ, nullable=True),
        sa.Column("last_job_id", UUID(as_uuid=True), nullable=True),
        sa.Column("created_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "(cron IS NULL) <> (interval_seconds IS NULL)", name="ck_schedules_one_rule"
        ),
        sa.CheckConstraint("catch_up IN ('once', 'skip')", name="ck_schedules_catch_up"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", name="uq_schedules_name"),
    )
    op.create_index(
        "ix_schedules_due", "schedules", ["next_run_at"], postgresql_where=sa.text("enabled")
    )


def downgrade() -> None:
    op.drop_index("ix_schedules_due", table_name="schedules")
    op.drop_table("schedules")
    op.drop_index("ix_job_dependencies_parent", table_name="job_dependencies")
    op.drop_table("job_dependencies")
    op.drop_index("ix_jobs_workflow", table_name="jobs")
    op.drop_index("ux_jobs_schedule_tick", table_name="jobs")
    op.drop_index("ux_jobs_unique_key", table_name="jobs")
    for column in (
        "parent_results",
        "on_parent_failure",
        "pending_parents",
        "workflow_id",
        "schedule_tick",
        "schedule_id",
        "unique_until",
        "unique_key",
    ):
        op.drop_column("jobs", column)
    op.execute("UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE status = 'waiting'")
    op.drop_constraint("ck_jobs_status", "jobs", type_="check")
    op.create_check_constraint("ck_jobs_status", "jobs", f"status IN {OLD_STATUSES}")
