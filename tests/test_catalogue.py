"""The task catalogue: workers publish their tasks, the API validates against what they
published without importing any task code (issue 16, part 4)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from app.api.app import create_app
from app.catalogue import store
from app.catalogue.wiring import definitions
from app.config import Settings
from app.runtime import Runtime, build_runtime
from app.tasks.registry import Registry
from tests.helpers import wait_for
from worker.runner import Worker


class Resize(BaseModel):
    """A payload the API has no Python model for: only its JSON Schema reaches it."""

    url: str
    width: int = Field(gt=0, le=4000)


class Strict(BaseModel):
    n: int
    mode: str


class Loose(BaseModel):
    n: int


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _registry(name: str, model: type[BaseModel], **options: Any) -> Registry:
    """A registry the API process does not share (as a separate worker image's would be)."""
    registry = Registry()
    registry.register(name, payload_model=model, **options)(lambda payload, ctx: None)
    return registry


def _publish(runtime: Runtime, registry: Registry, version: str) -> None:
    with runtime.sessions.begin() as session:
        store.publish(session, definitions(registry, version))


def _age(db: Any, name: str, version: str) -> None:
    """As if that version's workers stopped an hour ago."""
    with db.cursor() as cur:
        cur.execute(
            "UPDATE task_catalogue SET seen_at = now() - interval '1 hour'"
            " WHERE name = %s AND worker_version = %s",
            (name, version),
        )


@pytest.fixture
def fast_api(settings: Settings) -> Iterator[TestClient]:
    """The API reloading its catalogue every 0.2 s."""
    app = create_app(settings.model_copy(update={"catalogue_refresh_seconds": 0.2}))
    with TestClient(app) as client:
        yield client


@pytest.fixture
def own_worker(settings: Settings) -> Iterator[Any]:
    """Start a worker whose registry holds only the given tasks (the API lacks them)."""
    started: list[Worker] = []

    def start(registry: Registry) -> Worker:
        runtime = build_runtime(settings)
        runtime.registry = registry
        worker = Worker(runtime)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(grace=5)
        worker.runtime.close()


def test_worker_publishes_at_start_and_api_validates_with_the_schema(
    api: Any, own_worker: Any
) -> None:
    name = _name("resize")
    own_worker(_registry(name, Resize, timeout_seconds=30, priority="low"))
    # Published before start() returned; the API reloads for an unknown task at most every
    # 0.25 s, so the first submits may come just too early.
    wait_for(lambda: api.post("/jobs", json={"task": name}).json()["error"]["field"] != "task")

    bad = api.post("/jobs", json={"task": name, "payload": {"url": "x", "width": "wide"}})
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["field"] == "payload.width"
    missing = api.post("/jobs", json={"task": name, "payload": {"width": 10}})
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "payload.url"
    too_wide = api.post("/jobs", json={"task": name, "payload": {"url": "x", "width": 5000}})
    assert too_wide.json()["error"]["field"] == "payload.width"

    ok = api.post("/jobs", json={"task": name, "payload": {"url": "x", "width": 10}})
    assert ok.status_code == 201, ok.text
    # The task's own defaults, from the catalogue.
    assert ok.json()["priority"] == "low" and ok.json()["timeout_seconds"] == 30

    listed = {t["name"]: t for t in api.get("/tasks").json()["tasks"]}
    entry = listed[name]
    assert entry["live"] is True and entry["builtin"] is False
    assert entry["payload_schema"]["required"] == ["url", "width"]
    assert entry["timeout_seconds"] == 30 and entry["priority"] == "low"
    assert listed["echo"]["builtin"] is False  # the test session published the built-ins too
    assert api.get(f"/tasks/{name}").json()["name"] == name
    assert api.get("/tasks/nope").status_code == 404

    unknown = api.post("/jobs", json={"task": "nope"})
    assert unknown.status_code == 422 and name in unknown.json()["error"]["message"]


def test_rolling_deploy_payload_must_suit_every_live_version(
    fast_api: TestClient, runtime: Runtime, db: Any
) -> None:
    name = _name("roll")
    _publish(runtime, _registry(name, Strict), "v1")  # old workers still running
    _publish(runtime, _registry(name, Loose), "v2")  # new workers starting
    wait_for(lambda: len(fast_api.get(f"/tasks/{name}").json().get("versions", [])) == 2)

    both = fast_api.post("/jobs", json={"task": name, "payload": {"n": 1}})
    assert both.status_code == 422 and both.json()["error"]["field"] == "payload.mode"
    suits_both = fast_api.post("/jobs", json={"task": name, "payload": {"n": 1, "mode": "a"}})
    assert suits_both.status_code == 201

    _age(db, name, "v1")  # the last v1 worker is gone: v2's schema alone applies
    wait_for(lambda: len(fast_api.get(f"/tasks/{name}").json()["versions"]) == 1)
    only_new = fast_api.post("/jobs", json={"task": name, "payload": {"n": 1}})
    assert only_new.status_code == 201, only_new.text


def test_task_without_a_live_worker_is_accepted_by_its_newest_schema(
    fast_api: TestClient, runtime: Runtime, db: Any
) -> None:
    name = _name("idle")
    _publish(runtime, _registry(name, Loose), "v1")
    _age(db, name, "v1")
    wait_for(lambda: fast_api.get(f"/tasks/{name}").status_code == 200)
    entry = fast_api.get(f"/tasks/{name}").json()
    assert entry["live"] is False and entry["versions"][0]["worker_version"] == "v1"
    queued = fast_api.post("/jobs", json={"task": name, "payload": {"n": 1}})
    assert queued.status_code == 201 and queued.json()["status"] == "queued"
    refused = fast_api.post("/jobs", json={"task": name, "payload": {"n": "one"}})
    assert refused.json()["error"]["field"] == "payload.n"


def test_batch_items_name_the_payload_field(fast_api: TestClient, runtime: Runtime) -> None:
    name = _name("batch")
    _publish(runtime, _registry(name, Loose), "v1")
    # An unknown name reloads the catalogue at most every 0.25 s: wait until it is seen.
    wait_for(lambda: fast_api.get(f"/tasks/{name}").status_code == 200)
    jobs = [{"task": name, "payload": {"n": 1}}, {"task": name, "payload": {}}]
    resp = fast_api.post("/jobs/batch", json={"jobs": jobs, "atomic": True})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "jobs.1.payload.n", (
        resp.text
    )


def test_dashboard_lists_the_catalogue(fast_api: TestClient, runtime: Runtime, db: Any) -> None:
    name = _name("shown")
    _publish(runtime, _registry(name, Loose, description="Shown on the dashboard."), "v7")
    wait_for(lambda: fast_api.get(f"/tasks/{name}").status_code == 200)
    page = fast_api.get("/dashboard").text
    row = page[page.index(f"<td>{name}</td>") :].split("</tr>")[0]
    assert "live" in row and "v7" in row and "Shown on the dashboard." in row
