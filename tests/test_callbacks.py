"""Completion callbacks: signed POSTs of the finished job, retried as their own job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import jobq
from app.config import Settings
from app.jobs.callbacks import sign, verify_signature
from tests.helpers import start_worker_process, wait_for
from tests.http_server import ScriptedServer

SECRET = "test-callback-secret"


@pytest.fixture
def receiver() -> Iterator[ScriptedServer]:
    """A local HTTP receiver on 127.0.0.1."""
    srv = ScriptedServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def signing(settings: Settings) -> Settings:
    """Settings with a callback secret (the API refuses callback_url without one)."""
    return settings.model_copy(update={"callback_secret": SECRET})


def test_signature_round_trip_and_refusals() -> None:
    body = b'{"id":"x"}'
    header = sign(SECRET, body, timestamp=1_000_000)
    assert header.startswith("t=1000000,v1=")
    assert verify_signature(SECRET, header, body, now=1_000_100)
    assert not verify_signature(SECRET, header, body + b" ", now=1_000_100)  # body changed
    assert not verify_signature("other", header, body, now=1_000_100)  # wrong secret
    assert not verify_signature(SECRET, header, body, now=1_000_400)  # too old: a replay
    assert not verify_signature(SECRET, "garbage", body)


def test_callback_url_is_validated_and_needs_a_secret(api: Any) -> None:
    refused = api.post("/jobs", json={"task": "echo", "callback_url": "https://example.com/x"})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "callback_url"
    assert "JOBQ_CALLBACK_SECRET" in refused.json()["error"]["message"]
    bad = api.post("/jobs", json={"task": "echo", "callback_url": "ftp://example.com/x"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "callback_url"
    # Only jobq creates deliveries: a submitted one could get any body signed.
    forged = {"url": "https://example.com/x", "job": {"id": "x", "status": "succeeded"}}
    direct = api.post("/jobs", json={"task": "jobq.callback", "payload": forged})
    assert direct.status_code == 422 and direct.json()["error"]["field"] == "task"


def _callback_jobs(db: Any) -> list[tuple[str, int, Any]]:
    with db.cursor() as cur:
        cur.execute("SELECT status, attempts, result FROM jobs WHERE task = 'jobq.callback'")
        return list(cur.fetchall())


def test_signed_callback_is_retried_and_verified_by_a_local_receiver(
    signing: Settings, db: Any, receiver: ScriptedServer, procs: Any, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    env = {"JOBQ_CALLBACK_SECRET": SECRET, "JOBQ_HTTP_ALLOWED_NETWORKS": "127.0.0.1/32"}
    for i in range(2):
        procs.append(start_worker_process(signing, tmp_path / f"w{i}.log", **env))
    with TestClient(create_app(signing)) as api:
        url = receiver.url("/fail-once?key=cb")  # 500 first: the delivery is retried
        job = api.post(
            "/jobs", json={"task": "echo", "payload": {"n": 1}, "callback_url": url}
        ).json()
        assert job["callback_url"] == url
        wait_for(
            lambda: [c for c in _callback_jobs(db) if c[0] == "succeeded"],
            timeout=90,
            what="the callback to be delivered",
        )
    [(status, attempts, result)] = _callback_jobs(db)
    assert attempts == 2 and result["status"] == 200
    hits = [h for h in receiver.hits if h.path == "/fail-once"]
    assert len(hits) == 2
    for hit in hits:
        assert hit.method == "POST" and hit.headers["content-type"] == "application/json"
        assert jobq.verify_signature(SECRET, hit.headers["jobq-signature"], hit.body)
        assert hit.headers["jobq-job-id"] == job["id"]
    sent = json.loads(hits[-1].body)
    assert sent["id"] == job["id"] and sent["status"] == "succeeded"
    assert sent["result"] == {"n": 1} and sent["finished_at"]


def test_callback_to_a_private_address_is_refused_by_the_egress_guard(
    signing: Settings,
    db: Any,
    receiver: ScriptedServer,
    worker_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fastapi.testclient import TestClient

    from app.api.app import create_app
    from app.config import get_settings

    monkeypatch.setenv("JOBQ_CALLBACK_SECRET", SECRET)
    monkeypatch.delenv("JOBQ_HTTP_ALLOWED_NETWORKS", raising=False)
    get_settings.cache_clear()
    try:
        worker_factory(signing)
        with TestClient(create_app(signing)) as api:
            api.post("/jobs", json={"task": "echo", "callback_url": receiver.url("/ok")})
            wait_for(
                lambda: [c for c in _callback_jobs(db) if c[0] == "failed"],
                timeout=60,
                what="the callback to fail",
            )
    finally:
        get_settings.cache_clear()
    with db.cursor() as cur:
        cur.execute("SELECT attempts, error FROM jobs WHERE task = 'jobq.callback'")
        attempts, error = cur.fetchone()
    assert attempts == 1 and "loopback" in error  # permanent: never retried
    assert receiver.hits == []


def test_a_cancel_also_enqueues_the_callback_in_its_transaction(signing: Settings, db: Any) -> None:
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    with TestClient(create_app(signing)) as api:
        job = api.post(
            "/jobs",
            json={"task": "echo", "delay_seconds": 600, "callback_url": "https://example.com/h"},
        ).json()
        assert _callback_jobs(db) == []  # nothing until the job is final
        assert api.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    with db.cursor() as cur:
        cur.execute("SELECT payload, max_attempts FROM jobs WHERE task = 'jobq.callback'")
        [(payload, max_attempts)] = cur.fetchall()
    assert payload["url"] == "https://example.com/h" and max_attempts == 10
    assert payload["job"]["id"] == job["id"] and payload["job"]["status"] == "cancelled"
