"""Real parts for every test: PostgreSQL (pgserver or DATABASE_URL) and an SQS server
(moto's server in this process, or SQS_ENDPOINT_URL)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from app.catalogue import store
from app.catalogue.wiring import definitions
from app.cli.dev import SqsServer, start_postgres
from app.config import Settings
from app.db import make_engine, make_session_factory
from app.migrate import upgrade
from app.runtime import Runtime, build_runtime
from app.sqs.queue import ensure_queues, make_sqs_client
from app.tasks.registry import REGISTRY
from tests.browser import chromium
from tests.helpers import stop_process
from tests.tasks import EXECUTIONS_DDL
from worker.runner import Worker

# Lane markers (postgres, sqs, browser, processes, unit) from what each test needs.
pytest_plugins = ["tests.lanes"]

TEST_TASKS = "tests.tasks"
# The queues' crash guard (SQS moves a message to the DLQ after this many receives).
TEST_MAX_RECEIVE_COUNT = 4


def _admin_connect(url: str) -> Any:
    conn = psycopg2.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server: DATABASE_URL if set, else an embedded one in a temp dir."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    data_dir = tempfile.mkdtemp(prefix="jobq-pg-")
    url, server = start_postgres(__import__("pathlib").Path(data_dir))
    try:
        yield url
    finally:
        server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


def publish_test_catalogue(url: str) -> None:
    """Publish the test tasks as a worker would: API processes (which never import task
    modules) know them even in tests that start no worker."""
    REGISTRY.load_modules([TEST_TASKS])
    engine = make_engine(url, pool_size=1)
    try:
        with make_session_factory(engine).begin() as session:
            store.publish(session, definitions(REGISTRY, "tests"))
    finally:
        engine.dispose()


def create_database(server: str, prefix: str) -> str:
    """A new empty database on the server; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn = _admin_connect(server)
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return make_url(server).set(database=name).render_as_string(False)


def drop_database(server: str, url: str) -> None:
    """Drop a database made by create_database."""
    conn = _admin_connect(server)
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    conn.close()


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A migrated database for this test session."""
    url = create_database(server_url, "jobq_test")
    upgrade(url)
    conn = _admin_connect(url)
    with conn.cursor() as cur:
        cur.execute(EXECUTIONS_DDL)
    conn.close()
    publish_test_catalogue(url)
    os.environ["JOBQ_TEST_DATABASE_URL"] = url
    yield url
    drop_database(server_url, url)


@pytest.fixture(scope="session")
def sqs_endpoint() -> Iterator[str]:
    """An SQS wire-protocol endpoint: SQS_ENDPOINT_URL, else moto's server on 127.0.0.1."""
    if os.environ.get("SQS_ENDPOINT_URL"):
        yield os.environ["SQS_ENDPOINT_URL"]
        return
    server = SqsServer().start()
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture
def db(database_url: str) -> Iterator[Any]:
    """A psycopg2 connection (autocommit) to the test database, emptied before the test."""
    conn = _admin_connect(database_url)
    with conn.cursor() as cur:
        cur.execute(
            "TRUNCATE jobs, job_attempts, job_dependencies, schedules, test_executions, "
            "api_keys, workers, flow_controls"
        )
    yield conn
    conn.close()


def make_settings(database_url: str, endpoint: str, **overrides: Any) -> Settings:
    """Fast test settings on fresh queues (one queue pair per test keeps tests independent)."""
    base = Settings(
        database_url=database_url,
        sqs_endpoint_url=endpoint,
        sqs_queue_url="placeholder",
        task_modules=TEST_TASKS,
        max_attempts=3,
        sqs_wait_seconds=1,
        visibility_timeout_seconds=10,
        backoff_base_seconds=0.5,
        backoff_cap_seconds=1.0,
        dispatch_after_seconds=1.0,
        dispatch_interval_seconds=0.2,
        shutdown_grace_seconds=10,
        log_format="console",
        auth="disabled",  # tests/test_security.py turns it on
    )
    settings = base.model_copy(update=overrides)
    if settings.sqs_queue_url == "placeholder":
        name = f"jobq-test-{uuid.uuid4().hex[:10]}"
        url, dlq = ensure_queues(
            make_sqs_client(settings),
            name,
            f"{name}-dlq",
            max_receive_count=TEST_MAX_RECEIVE_COUNT,
            visibility_timeout=settings.visibility_timeout_seconds,
        )
        settings = settings.model_copy(update={"sqs_queue_url": url, "sqs_dlq_url": dlq})
    return settings


@pytest.fixture
def settings(db: Any, database_url: str, sqs_endpoint: str) -> Settings:
    """Settings for this test, with its own queue and DLQ, on an empty database."""
    return make_settings(database_url, sqs_endpoint)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """Engine + SQS client + registry for in-process use."""
    rt = build_runtime(settings)
    yield rt
    rt.close()


@pytest.fixture
def api(settings: Settings) -> Iterator[Any]:
    """An HTTP client for the real app (lifespan runs: publisher and dispatcher threads)."""
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def worker_factory(settings: Settings) -> Iterator[Any]:
    """Start in-process workers (`run=False`: only build them), with optional setting
    overrides; every one is stopped at teardown."""
    started: list[tuple[Worker, Runtime]] = []

    def start(custom: Settings | None = None, *, run: bool = True, **overrides: Any) -> Worker:
        rt = build_runtime((custom or settings).model_copy(update=overrides))
        w = Worker(rt)
        if run:
            w.start()
        started.append((w, rt))
        return w

    yield start
    for w, rt in started:
        w.stop(grace=5)
        rt.close()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes started by a test; all are killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        stop_process(p, grace=0)


@pytest.fixture
def procs_dir(tmp_path: Any) -> Any:
    """A directory for child process logs."""
    return tmp_path


@pytest.fixture
def live_api(settings: Settings) -> Iterator[str]:
    """The real app served by uvicorn on 127.0.0.1 (for clients that need a socket)."""
    from app.api.app import create_app
    from tests.helpers import serve

    with serve(create_app(settings)) as url:
        yield url


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium driven by Selenium through Debian's chromedriver (no downloads)."""
    with chromium() as driver:
        yield driver
