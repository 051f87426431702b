"""Database engine, sessions, and the adapter that turns SQLAlchemy errors into jobq errors."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.errors import DatabaseUnavailable, InvalidInput, JobqError

T = TypeVar("T")
log = logging.getLogger("jobq.db")


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


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    connect_timeout: int = 5,
    statement_timeout_ms: int = 0,
) -> Engine:
    """An engine with pre-ping so a restarted PostgreSQL costs one failed checkout, not a crash.

    Connecting gives up after `connect_timeout` seconds; TCP keepalives and tcp_user_timeout
    notice a peer that vanished (a dead host, a dropped network) within about 30 s instead of
    the kernel's two hours; `statement_timeout_ms` (the API's, not the worker's: its claims
    and handlers' transactions may be long) bounds what one statement may take.
    """
    options = "-c timezone=UTC"
    if statement_timeout_ms:
        options += f" -c statement_timeout={int(statement_timeout_ms)}"
    return create_engine(
        normalize_url(url),
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        # UTC sessions so every timestamp leaves the API as ISO 8601 UTC.
        connect_args={
            "connect_timeout": connect_timeout,
            "application_name": "jobq",
            "options": options,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": 30_000,
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


# SQLSTATEs for which PostgreSQL rolled the whole transaction back: deadlock_detected and
# serialization_failure.
_CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})
CONFLICT_RETRIES = 3


def is_conflict(exc: BaseException) -> bool:
    """True if `exc` (or what it was translated from) is a deadlock or serialization failure."""
    while exc is not None:
        if getattr(getattr(exc, "orig", None), "pgcode", None) in _CONFLICT_SQLSTATES:
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


class HeldConnections:
    """Each thread that runs transactions here keeps one pooled connection across them.

    A checkout per transaction pays the pool's pre-ping (a `SELECT 1` round trip) and a
    Session's bookkeeping; a hot loop (the worker's claims and completions) that keeps its
    connection pays neither. The price is that a connection can be dead when used (PostgreSQL
    restarted): SQLAlchemy then invalidates it (and every connection pooled before the
    restart) and the statement fails before anything was written, so `run` retries once on a
    fresh, pre-pinged checkout. Only a failure of the retry reaches the caller.

    The connections are in autocommit mode and `run` sends `BEGIN` and `COMMIT` itself, so a
    caller whose work is one statement can skip both (`atomic=False`): PostgreSQL runs a
    lone statement as a transaction of its own, one round trip instead of three (psycopg2
    sends `BEGIN` as a round trip of its own). At 1 ms to RDS that is 2 ms off each claim
    and each finish.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Connection] = []

    def run(self, work: Callable[[Connection], T], *, atomic: bool = True) -> T:
        """`work` in one transaction on this thread's connection, committed on return.

        `atomic=False` is for work that runs a single statement (or reads only): it runs
        without `BEGIN`/`COMMIT`, each statement committing on its own.

        Also run again (up to CONFLICT_RETRIES times) when PostgreSQL aborted the transaction
        to break a deadlock or a serialization conflict: nothing of it was written, and trying
        again is the remedy PostgreSQL documents. Without this a worker's failed claim waited
        for the visibility timeout (30 s) before its jobs came back.
        """
        reconnected, conflicts = False, 0
        while True:
            conn = self._connection()
            try:
                with translate_db_errors(), conn.begin():
                    return _transaction(conn, work) if atomic else work(conn)
            except DatabaseUnavailable as exc:
                if conn.invalidated:
                    self._drop(conn)
                    if reconnected:
                        raise
                    reconnected = True
                elif is_conflict(exc) and conflicts < CONFLICT_RETRIES:
                    conflicts += 1
                    log.info("transaction aborted by a conflict (%s); running it again", exc)
                else:
                    raise

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.invalidated:
            self._drop(conn)
            conn = None
        if conn is None or conn.closed:
            with translate_db_errors():
                # SQLAlchemy's begin/commit are then no-ops; _transaction sends the SQL.
                conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self, conn: Connection) -> None:
        self._local.conn = None
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        conn.close()

    def close(self) -> None:
        """Return every held connection to the pool (call when the threads are done)."""
        with self._lock:
            held, self._all = self._all, []
        for conn in held:
            conn.close()


def _transaction(conn: Connection, work: Callable[[Connection], T]) -> T:
    """`work` between `BEGIN` and `COMMIT` on an autocommit connection; rolled back if it raises."""
    conn.exec_driver_sql("BEGIN")
    try:
        out = work(conn)
    except BaseException:
        if not conn.invalidated:
            try:
                conn.exec_driver_sql("ROLLBACK")
            except Exception:  # noqa: BLE001 - the first error is the one to report
                # Never reuse a connection that may still be inside the failed transaction.
                log.debug("rollback after a failed transaction failed too", exc_info=True)
                conn.invalidate()
        raise
    conn.exec_driver_sql("COMMIT")
    return out
