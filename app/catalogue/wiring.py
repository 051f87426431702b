"""The catalogue wired to a process: workers publish theirs, submitters read it."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.catalogue import store
from app.catalogue.cache import Catalogue
from app.catalogue.definitions import Definition, from_spec
from app.config import Settings
from app.db import translate_db_errors
from app.loops import PeriodicLoop
from app.tasks.registry import REGISTRY, Registry

log = logging.getLogger("jobq.catalogue")


def worker_version(settings: Settings) -> str:
    """JOBQ_WORKER_VERSION, else the installed jobq package's version."""
    if settings.worker_version:
        return settings.worker_version
    try:
        return f"jobq {importlib.metadata.version('jobq')}"
    except importlib.metadata.PackageNotFoundError:
        return "jobq"


def definitions(registry: Registry, version: str = "") -> list[Definition]:
    """The definitions of every task in `registry`."""
    return [from_spec(spec, version) for spec in registry.specs()]


def local_definitions() -> list[Definition]:
    """This process's own tasks (the built-ins, in an API process)."""
    return definitions(REGISTRY)


def check_local(name: str, payload: Mapping[str, Any]) -> None:
    """Validate with the task's pydantic model if this process registered the task."""
    if name in REGISTRY.names():
        REGISTRY.validate_payload(name, dict(payload))


def build_catalogue(sessions: sessionmaker[Session], settings: Settings) -> Catalogue:
    """The catalogue a submitting process (API, CLI) validates with."""

    def load() -> list[Definition]:
        with translate_db_errors(), sessions() as session:
            return store.read(
                store.session_fetch(session), live_seconds=settings.catalogue_live_seconds
            )

    return Catalogue(
        load,
        local_definitions,
        # CatalogueRefresher reloads every catalogue_refresh_seconds: a request reloads only
        # if it stopped (a read on the event loop otherwise).
        max_age=settings.catalogue_refresh_seconds * 3,
        unknown_retry=min(0.25, settings.catalogue_refresh_seconds),
        local_check=check_local,
    )


class CatalogueRefresher(PeriodicLoop):
    """Reloads a catalogue in the background, so requests never wait for the read."""

    def __init__(self, catalogue: Catalogue, interval: float) -> None:
        super().__init__("jobq-catalogue", interval=interval, logger=log)
        self._catalogue = catalogue

    def tick(self) -> float | None:
        """One reload."""
        self._catalogue.refresh()
        return None


class CataloguePublisher(PeriodicLoop):
    """A worker's loop: publish its tasks at start, then again every quarter of the live
    window (that is what keeps them live)."""

    def __init__(
        self, sessions: sessionmaker[Session], registry: Registry, settings: Settings
    ) -> None:
        super().__init__(
            "jobq-catalogue-publish", interval=settings.catalogue_live_seconds / 4, logger=log
        )
        self._sessions = sessions
        self._definitions = definitions(registry, worker_version(settings))

    def publish(self) -> int:
        """Upsert this worker's definitions now; how many."""
        with translate_db_errors(), self._sessions.begin() as session:
            return store.publish(session, self._definitions)

    def tick(self) -> float | None:
        """One publish."""
        self.publish()
        return None
