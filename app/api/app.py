"""The FastAPI application factory."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app.api.dashboard import routes as dashboard_routes
from app.api.errors import install_error_handlers
from app.api.middleware.auth import ApiKeyAuth
from app.api.middleware.body_limit import BodySizeLimit
from app.api.middleware.metrics import HttpMetrics
from app.api.middleware.rate_limit import RateLimiter
from app.api.probes import build_sampler
from app.api.routes import controls as control_routes
from app.api.routes import health
from app.api.routes import jobs as job_routes
from app.api.routes import ops as ops_routes
from app.api.routes import schedules as schedule_routes
from app.api.routes import workflows as workflow_routes
from app.api.routes.fast_submit import FastSubmit
from app.auth.keys import KeySet, parse_env_keys
from app.catalogue.wiring import CatalogueRefresher, build_catalogue
from app.config import Settings, get_settings
from app.errors import DatabaseUnavailable, JobqError
from app.jobs.service import JobService
from app.maintenance.reconciler import build_reconciler
from app.maintenance.retention import Retention
from app.observability import otel
from app.observability.logs import configure_logging
from app.observability.metrics import CachedGaugeCollector
from app.outbox.dispatcher import build_dispatcher
from app.outbox.publisher import Publisher
from app.runtime import Runtime, build_runtime
from app.schedules.service import ScheduleService
from app.schedules.ticker import build_ticker
from app.sqs.queue import make_sqs_client

log = logging.getLogger("jobq.api")


def require_some_key(keys: KeySet, runtime: Runtime) -> None:
    """Refuse to start an API nobody could call, or anybody could: keys or explicit opt-out."""
    if keys.has_env_keys:
        return
    try:
        if keys.table_count() > 0:
            return
    except DatabaseUnavailable:
        # Cannot tell yet; requests are refused (401) until the keys table can be read.
        log.warning("PostgreSQL unreachable at start-up; API keys load once it is back")
        return
    runtime.close()
    raise JobqError(
        "no API keys: set JOBQ_API_KEYS or run `jobq keys create NAME`, "
        "or set JOBQ_AUTH=disabled explicitly",
        field="JOBQ_API_KEYS",
    )


def tune_gc_for_serving() -> None:
    """Garbage-collector settings for a long-running API process (not for tests).

    Measured at ~500 POST /jobs per second with the defaults: ~65 collections a second, and a
    full one every ~2 s that scanned everything start-up built (~150,000 objects: modules,
    pydantic and SQLAlchemy metadata, botocore models), pausing every thread for 100-200 ms:
    most of the p99. Start-up objects are frozen (never scanned again) and young collections
    run ~14x less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def serving_app() -> FastAPI:
    """The app `jobq api` serves (uvicorn's factory in each of several worker processes)."""
    return create_app(tune_gc=True)


def create_app(settings: Settings | None = None, *, tune_gc: bool = False) -> FastAPI:
    """Build the API; connections open lazily and background threads start with the app."""
    settings = settings or get_settings()
    configure_logging(settings)
    otel.configure()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = build_runtime(
            settings,
            # The API's SQS calls (sends) never wait as long as a worker's long poll.
            sqs_client=make_sqs_client(settings, read_timeout=settings.sqs_read_timeout_seconds),
            statement_timeout_ms=settings.api_statement_timeout_ms,
            load_tasks=False,  # the API never imports task code (the catalogue instead)
        )
        publisher = Publisher(
            runtime.sqs,
            runtime.sessions,
            threads=settings.publish_threads,
            linger_seconds=settings.publish_linger_ms / 1000,
        )
        dispatcher = build_dispatcher(
            runtime,
            settings,
            defer=lambda: publisher.lagging(settings.dispatch_after_seconds / 2),
        )
        retention = Retention(runtime.sessions, retention_days=settings.retention_days)
        # Every API process runs it; a PostgreSQL advisory lock lets one pass run at a time.
        reconciler = build_reconciler(runtime, settings)
        app.state.runtime = runtime
        app.state.publisher = publisher
        app.state.dispatcher = dispatcher
        catalogue = build_catalogue(runtime.sessions, settings)
        ticker = build_ticker(runtime, settings, catalogue)
        refresher = CatalogueRefresher(catalogue, settings.catalogue_refresh_seconds)
        app.state.jobs = JobService(runtime.sessions, catalogue, publisher, settings)
        app.state.schedules = ScheduleService(
            runtime.sessions, catalogue, settings.max_payload_depth
        )
        sampler = build_sampler(settings, runtime.engine, runtime.sqs)
        app.state.sampler = sampler
        app.state.sampled_metrics = CachedGaugeCollector(sampler.gauges, ttl=0)
        app.state.keys = KeySet(
            parse_env_keys(settings.api_keys), runtime.sessions, settings.keys_reload_seconds
        )
        if settings.auth == "required":
            require_some_key(app.state.keys, runtime)
        publisher.start()
        sampler.start()
        refresher.start()
        # Readiness from the first probe rather than "not probed yet" (bounded: a hung SQS
        # costs one probe timeout of start-up, PostgreSQL its connect timeout).
        await anyio.to_thread.run_sync(
            sampler.wait_first,
            settings.probe_timeout_seconds + settings.db_connect_timeout_seconds + 1,
        )
        if settings.dispatcher:
            dispatcher.start()
            retention.start()
            ticker.start()
            if reconciler is not None:
                reconciler.start()
        if tune_gc:
            tune_gc_for_serving()
        try:
            yield
        finally:
            app.state.jobs.close()  # commits what is queued and hands it to the publisher
            dispatcher.stop()
            retention.stop()
            ticker.stop()
            if reconciler is not None:
                reconciler.stop()
            refresher.stop()
            sampler.stop()
            publisher.stop()
            runtime.close()

    # /docs and /redoc load Swagger UI and ReDoc from the installed fastapi-offline package
    # (served under /static-offline-docs), never from a CDN: they work without internet access.
    app = FastAPIOffline(
        title="jobq",
        version="0.1.0",
        summary="Asynchronous jobs on PostgreSQL and Amazon SQS",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(FastSubmit)  # innermost: after auth, rate limit, size limit, metrics
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_payload_bytes)
    limiter = (
        RateLimiter(settings.submit_rate, settings.submit_burst) if settings.submit_rate else None
    )
    app.add_middleware(
        ApiKeyAuth,
        enabled=settings.auth == "required",
        limiter=limiter,
        cache_seconds=min(1.0, settings.keys_reload_seconds),
    )
    app.add_middleware(HttpMetrics)  # outermost: measures everything, 401s included
    app.include_router(job_routes.router)  # first: the hot routes match without scanning others
    app.include_router(health.router)
    app.include_router(ops_routes.router)
    app.include_router(schedule_routes.router)
    app.include_router(workflow_routes.router)
    app.include_router(control_routes.router)
    app.include_router(dashboard_routes.router)
    return app
