"""task catalogue: what each worker version says its tasks accept (payload JSON Schema and
defaults), so the API validates submits without importing any task code

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per task and distinct definition (digest of everything below): two worker
    # versions with different schemas for one task are two rows while both are alive.
    op.create_table(
        "task_catalogue",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("payload_schema", JSONB(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=True),
        sa.Column("max_attempts", sa.Integer(), nullable=True),
        sa.Column("backoff", JSONB(), nullable=True),
        sa.Column("priority", sa.String(16), nullable=True),
        sa.Column("queue", sa.String(64), nullable=True),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("worker_version", sa.String(200), server_default="", nullable=False),
        sa.Column(
            "first_seen_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "seen_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )


def downgrade() -> None:
    op.drop_table("task_catalogue")
