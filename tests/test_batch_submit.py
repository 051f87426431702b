"""POST /jobs/batch: per-item errors, atomic batches, limits, idempotent items, 500 at once."""

from __future__ import annotations

from typing import Any

from tests.helpers import scalar, wait_for_status


def test_batch_reports_item_errors_and_keeps_valid_items(api: Any, worker_factory: Any) -> None:
    jobs = [{"task": "echo", "payload": {"i": i}} for i in range(3)]
    jobs.insert(1, {"task": "nope"})
    resp = api.post("/jobs/batch", json={"jobs": jobs})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["created"], body["errors"]) == (3, 1)
    assert body["items"][1]["status"] == "error"
    assert body["items"][1]["error"]["field"] == "jobs.1.task"
    worker_factory()
    for item in body["items"]:
        if item["job"]:
            wait_for_status(api, item["job"]["id"], "succeeded")


def test_atomic_batch_rejects_everything_on_one_bad_item(api: Any, db: Any) -> None:
    jobs = [{"task": "echo"}, {"task": "sleep", "payload": {"seconds": -1}}]
    resp = api.post("/jobs/batch", json={"jobs": jobs, "atomic": True})
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "jobs.1.payload.seconds"
    assert scalar(db, "SELECT count(*) FROM jobs") == 0


def test_batch_limits_and_idempotent_items(api: Any, db: Any) -> None:
    too_many = api.post("/jobs/batch", json={"jobs": [{"task": "echo"}] * 501})
    assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "jobs"
    assert api.post("/jobs/batch", json={"jobs": []}).status_code == 422
    item = {"task": "echo", "idempotency_key": "batch-1"}
    first = api.post("/jobs/batch", json={"jobs": [item, {"task": "echo"}]}).json()
    second = api.post("/jobs/batch", json={"jobs": [item]}).json()
    assert first["created"] == 2 and second["existing"] == 1
    assert second["items"][0]["job"]["id"] == first["items"][0]["job"]["id"]
    assert scalar(db, "SELECT count(*) FROM jobs") == 2


def test_full_batch_of_500_in_one_request(api: Any, db: Any) -> None:
    resp = api.post("/jobs/batch", json={"jobs": [{"task": "echo"}] * 500})
    assert resp.status_code == 200 and resp.json()["created"] == 500
    assert scalar(db, "SELECT count(*) FROM jobs") == 500
