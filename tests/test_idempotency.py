"""Idempotency keys: one job per key and request, 409 for a different request, expiry.
Real PostgreSQL and SQS server."""

from __future__ import annotations

import threading
from typing import Any

from tests.helpers import scalar


def test_same_key_same_request_returns_original(api: Any, db: Any) -> None:
    body = {"task": "echo", "payload": {"n": 1}}
    first = api.post("/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    again = api.post("/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    in_body = api.post("/jobs", json={**body, "idempotency_key": "k-1"})
    assert first.status_code == 201 and again.status_code == 200 and in_body.status_code == 200
    assert first.json()["id"] == again.json()["id"] == in_body.json()["id"]
    assert scalar(db, "SELECT count(*) FROM jobs") == 1


def test_same_key_different_request_is_409_naming_the_first_job(api: Any) -> None:
    first = api.post(
        "/jobs", json={"task": "echo", "payload": {"n": 1}}, headers={"Idempotency-Key": "k"}
    ).json()
    resp = api.post(
        "/jobs", json={"task": "echo", "payload": {"n": 2}}, headers={"Idempotency-Key": "k"}
    )
    assert resp.status_code == 409
    assert resp.json()["error"]["field"] == "idempotency_key"
    assert resp.json()["error"]["job_id"] == first["id"]


def test_concurrent_identical_requests_make_one_job(api: Any, db: Any) -> None:
    codes: list[int] = []
    ids: set[str] = set()
    barrier = threading.Barrier(8)

    def submit() -> None:
        barrier.wait()
        r = api.post("/jobs", json={"task": "echo"}, headers={"Idempotency-Key": "race"})
        codes.append(r.status_code)
        ids.add(r.json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(codes) == [200] * 7 + [201]
    assert len(ids) == 1 and scalar(db, "SELECT count(*) FROM jobs") == 1


def test_expired_key_makes_a_new_job(api: Any, db: Any) -> None:
    first = api.post("/jobs", json={"task": "echo"}, headers={"Idempotency-Key": "old"}).json()
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET idempotency_expires_at = now() - interval '1 second'")
    second = api.post("/jobs", json={"task": "echo"}, headers={"Idempotency-Key": "old"})
    assert second.status_code == 201 and second.json()["id"] != first["id"]


def test_conflicting_header_and_body_keys_are_422(api: Any) -> None:
    resp = api.post(
        "/jobs", json={"task": "echo", "idempotency_key": "a"}, headers={"Idempotency-Key": "b"}
    )
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "idempotency_key"
