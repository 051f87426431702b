"""Alembic environment: runs migrations online against DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from app.auth import models as auth_models  # noqa: F401 - registers the tables on Base.metadata
from app.catalogue import models as catalogue_models  # noqa: F401
from app.config import get_settings
from app.db import Base, normalize_url
from app.jobs import models, workers  # noqa: F401
from app.schedules import models as schedule_models  # noqa: F401

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    # `jobq migrate` passes the URL explicitly; plain `alembic` falls back to DATABASE_URL.
    return config.attributes.get("database_url") or get_settings().database_url


def run_migrations_online() -> None:
    """Run migrations in one transaction on a fresh connection."""
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(normalize_url(_url()), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
