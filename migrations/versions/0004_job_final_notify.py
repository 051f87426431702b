"""NOTIFY jobq_job_final (payload: the job id) when a job reaches a final status

A trigger rather than a NOTIFY in application code, so every writer (the worker's completer,
the dead-letter consumer, cancel, a manual UPDATE) wakes the API's long polls
(GET /jobs/{id}?wait=N) without knowing about them. The channel name is
app.jobs.notify.CHANNEL.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION jobq_notify_final() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('jobq_job_final', NEW.id::text);
            RETURN NULL;
        END
        $$
        """
    )
    # Row-level with a WHEN clause: PostgreSQL evaluates the condition itself, so updates that
    # do not end a job (claims, heartbeats, retries) never call the function.
    op.execute(
        """
        CREATE TRIGGER jobs_notify_final
        AFTER UPDATE OF status ON jobs
        FOR EACH ROW
        WHEN (NEW.status IN ('succeeded', 'failed', 'cancelled')
              AND OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION jobq_notify_final()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS jobs_notify_final ON jobs")
    op.execute("DROP FUNCTION IF EXISTS jobq_notify_final()")
