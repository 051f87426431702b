"""Migrations build the schema the models describe, from an empty database."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.auth import models as auth_models  # noqa: F401 - registers tables
from app.catalogue import models as catalogue_models  # noqa: F401
from app.db import Base, normalize_url
from app.jobs import models, workers  # noqa: F401
from app.migrate import alembic_config, upgrade
from app.schedules import models as schedule_models  # noqa: F401
from tests.conftest import create_database, drop_database


def test_upgrade_head_on_empty_database_matches_models(server_url: str) -> None:
    url = create_database(server_url, "jobq_migrations")
    try:
        upgrade(url)
        engine = create_engine(normalize_url(url))
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == [], f"models and migrations disagree: {diff}"
            assert {"jobs", "job_attempts", "api_keys", "alembic_version"} <= set(
                inspect(conn).get_table_names()
            )
        command.check(alembic_config(url))  # alembic's own "no pending changes" check
        command.downgrade(alembic_config(url), "base")
        with engine.connect() as conn:
            assert "jobs" not in inspect(conn).get_table_names()
        engine.dispose()
    finally:
        drop_database(server_url, url)
