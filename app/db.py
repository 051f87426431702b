"""Database engine, sessions, and the adapter that turns SQLAlchemy errors into jobq errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.errors import DatabaseUnavailable, InvalidInput, JobqError


class Base(DeclarativeBase):
    """Declarative base of every jobq table."""


def normalize_url(url: str) -> str:
    """Accept plain `postgresql://` and `postgres://` URLs and pin the psycopg2 driver."""
    if not url:
        raise JobqError("DATABASE_URL is not set", field="DATABASE_URL")
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def masked_url(url: str) -> str:
    """The URL with its password replaced, safe for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL must still never leak
        return "<unparseable database url>"


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine with pre-ping so a restarted PostgreSQL costs one failed checkout, not a crash."""
    return create_engine(
        normalize_url(url),
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        # UTC sessions so every timestamp leaves the API as ISO 8601 UTC.
        connect_args={
            "connect_timeout": 5,
            "application_name": "jobq",
            "options": "-c timezone=UTC",
        },
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded values after commit (we return them to callers)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def translate_db_errors() -> Iterator[None]:
    """Re-raise connection-level SQLAlchemy failures as DatabaseUnavailable."""
    try:
        yield
    except OperationalError as exc:
        raise DatabaseUnavailable("database unavailable: " + _first_line(exc)) from exc
    except DataError as exc:
        # PostgreSQL refused a value (SQLSTATE class 22): bad input, never a server error.
        raise InvalidInput("a value is out of range or malformed: " + _first_line(exc)) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise DatabaseUnavailable("database connection lost") from exc
        raise


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", exc) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
