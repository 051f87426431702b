"""flow control: named queues, per-task/per-queue pause and limits (flow_controls), job
progress and completion callbacks

Revision ID: 0008
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Attempts of a callback delivery (retried with the default backoff: about an hour and more).
CALLBACK_MAX_ATTEMPTS = 10


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("queue", sa.String(64), server_default="default", nullable=False),
    )
    op.add_column("jobs", sa.Column("progress", sa.Float(), nullable=True))
    op.add_column("jobs", sa.Column("progress_message", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("callback_url", sa.Text(), nullable=True))
    # A claim under a concurrency limit counts the task's running jobs.
    op.create_index(
        "ix_jobs_running_task", "jobs", ["task"], postgresql_where=sa.text("status = 'running'")
    )
    op.create_table(
        "flow_controls",
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        # Set at run time (API/CLI); NULL falls back to what the code declares.
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("rate_count", sa.Integer(), nullable=True),
        sa.Column("rate_period", sa.Float(), nullable=True),
        # Declared in code (@task(max_concurrency=..., rate_limit=...)), written by workers.
        sa.Column("declared_max_concurrency", sa.Integer(), nullable=True),
        sa.Column("declared_rate_count", sa.Integer(), nullable=True),
        sa.Column("declared_rate_period", sa.Float(), nullable=True),
        # The rate limit's token bucket, updated by each claim holding the row's lock.
        sa.Column("tokens", sa.Float(), nullable=True),
        sa.Column("refilled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("scope", "name"),
        sa.CheckConstraint("scope IN ('task', 'queue')", name="ck_flow_controls_scope"),
    )

    # Completion callbacks: a job with a callback_url that reaches a final status gets a
    # `jobq.callback` job in the same transaction, whoever wrote the status (the completer,
    # cancel, the dead-letter consumer). It is inserted unpublished: the dispatcher sends it.
    op.execute(
        f"""
        CREATE FUNCTION jobq_enqueue_callback() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO jobs (id, task, status, payload, max_attempts, trace_id, priority)
            VALUES (gen_random_uuid(), 'jobq.callback', 'queued',
                    jsonb_build_object('url', NEW.callback_url, 'job', jsonb_build_object(
                        'id', NEW.id, 'task', NEW.task, 'status', NEW.status,
                        'result', NEW.result, 'error', NEW.error, 'attempts', NEW.attempts,
                        'failures', NEW.failures, 'max_attempts', NEW.max_attempts,
                        'series', NEW.series, 'queue', NEW.queue, 'priority', NEW.priority,
                        'progress', NEW.progress, 'progress_message', NEW.progress_message,
                        'created_at', NEW.created_at, 'started_at', NEW.started_at,
                        'finished_at', NEW.finished_at, 'trace_id', NEW.trace_id)),
                    {CALLBACK_MAX_ATTEMPTS}, NEW.trace_id, NEW.priority);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER jobs_enqueue_callback
        AFTER UPDATE OF status ON jobs
        FOR EACH ROW
        WHEN (NEW.callback_url IS NOT NULL
              AND NEW.status IN ('succeeded', 'failed', 'cancelled')
              AND OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION jobq_enqueue_callback()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS jobs_enqueue_callback ON jobs")
    op.execute("DROP FUNCTION IF EXISTS jobq_enqueue_callback()")
    op.drop_table("flow_controls")
    op.drop_index("ix_jobs_running_task", table_name="jobs")
    for column in ("callback_url", "progress_at", "progress_message", "progress", "queue"):
        op.drop_column("jobs", column)
