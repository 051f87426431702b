"""The HTTP contract of the jobs API against real PostgreSQL and SQS."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.helpers import wait_for

JOB_FIELDS = {
    "id",
    "task",
    "status",
    "payload",
    "result",
    "error",
    "attempts",
    "max_attempts",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
}


def _error(resp: Any) -> dict[str, Any]:
    body = resp.json()
    assert set(body["error"]) >= {"code", "message", "field"}, body
    return body["error"]


def test_submit_returns_queued_job_and_publishes_its_id_only(api: Any, runtime: Any) -> None:
    resp = api.post("/jobs", json={"task": "echo", "payload": {"a": [1, 2]}})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert set(job) >= JOB_FIELDS
    assert job["status"] == "queued" and job["attempts"] == 0 and job["max_attempts"] == 3
    assert job["payload"] == {"a": [1, 2]} and job["result"] is None
    assert job["created_at"].endswith("Z")
    messages = wait_for(lambda: runtime.sqs.receive(10, 1), what="the published message")
    assert [str(m.job_id) for m in messages] == [job["id"]]


def test_message_body_is_only_the_job_id(api: Any, runtime: Any) -> None:
    job = api.post("/jobs", json={"task": "echo", "payload": {"secret": "x" * 50}}).json()
    raw = wait_for(
        lambda: runtime.sqs.client.receive_message(QueueUrl=runtime.sqs.url, WaitTimeSeconds=1).get(
            "Messages"
        ),
        what="message",
    )
    assert json.loads(raw[0]["Body"]) == {"job_id": job["id"]}


def test_payload_defaults_to_empty_object(api: Any) -> None:
    resp = api.post("/jobs", json={"task": "echo"})
    assert resp.status_code == 201
    assert resp.json()["payload"] == {}


def test_get_job_and_not_found(api: Any) -> None:
    job = api.post("/jobs", json={"task": "echo"}).json()
    got = api.get(f"/jobs/{job['id']}")
    assert got.status_code == 200 and got.json()["id"] == job["id"]
    missing = api.get(f"/jobs/{uuid.uuid4()}")
    assert missing.status_code == 404 and _error(missing)["code"] == "not_found"
    malformed = api.get("/jobs/not-a-uuid")
    assert malformed.status_code == 422 and _error(malformed)["field"] == "job_id"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"task": "nope"}, 422, "task"),
        ({"payload": {}}, 422, "task"),
        ({"task": ""}, 422, "task"),
        ({"task": "echo", "payload": [1]}, 422, "payload"),
        ({"task": "echo", "payload": "x"}, 422, "payload"),
        ({"task": "echo", "surprise": 1}, 422, "surprise"),
        ({"task": "sleep", "payload": {"seconds": -1}}, 422, "payload.seconds"),
        ({"task": "sleep", "payload": {"seconds": 3601}}, 422, "payload.seconds"),
        ({"task": "sleep", "payload": {}}, 422, "payload.seconds"),
        ({"task": "flaky", "payload": {"failures": "many"}}, 422, "payload.failures"),
        ([1, 2], 422, "body"),
    ],
)
def test_bad_submissions_get_4xx_naming_the_field(
    api: Any, body: Any, status: int, field: str, db: Any
) -> None:
    resp = api.post("/jobs", json=body)
    assert resp.status_code == status, resp.text
    assert _error(resp)["field"] == field
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs")
        assert cur.fetchone()[0] == 0


def test_body_not_json(api: Any) -> None:
    resp = api.post("/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422
    assert "json" in _error(resp)["message"].lower()


def test_body_over_limit_is_413(api: Any, settings: Any) -> None:
    big = {"task": "echo", "payload": {"x": "a" * settings.max_payload_bytes}}
    resp = api.post("/jobs", json=big)
    assert resp.status_code == 413
    assert _error(resp)["code"] == "payload_too_large"


def test_body_over_limit_without_content_length_is_413(api: Any, settings: Any) -> None:
    def chunks() -> Any:
        yield b'{"task": "echo", "payload": {"x": "'
        for _ in range(settings.max_payload_bytes // 65536 + 2):
            yield b"a" * 65536
        yield b'"}}'

    resp = api.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413


def test_list_newest_first_filters_and_paginates(api: Any) -> None:
    ids = [
        api.post("/jobs", json={"task": "echo", "payload": {"i": i}}).json()["id"] for i in range(5)
    ]
    api.post("/jobs", json={"task": "sleep", "payload": {"seconds": 0}})
    page = api.get("/jobs", params={"task": "echo", "limit": 2}).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    seen = [j["id"] for j in page["items"]]
    while page["next_cursor"]:
        page = api.get(
            "/jobs", params={"task": "echo", "limit": 2, "cursor": page["next_cursor"]}
        ).json()
        seen += [j["id"] for j in page["items"]]
    assert seen == ids[::-1]
    assert len(api.get("/jobs", params={"status": "queued"}).json()["items"]) >= 1
    assert api.get("/jobs", params={"status": "succeeded"}).json()["items"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"status": "bogus"}, "status"),
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": "YWJj"}, "cursor"),
    ],
)
def test_bad_list_parameters_get_422(api: Any, params: dict[str, Any], field: str) -> None:
    resp = api.get("/jobs", params=params)
    assert resp.status_code == 422, resp.text
    assert _error(resp)["field"] == field


def test_limit_500_is_allowed(api: Any) -> None:
    assert api.get("/jobs", params={"limit": 500}).status_code == 200


def test_health_readiness_and_docs(api: Any) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "sqs": "ok"}
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/jobs", "/jobs/{job_id}", "/healthz", "/readyz"} <= set(paths)


def test_error_schema_in_openapi_matches_what_is_sent(api: Any) -> None:
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    assert "details" in schemas["ErrorBody"]["properties"]
    assert "job_id" in schemas["ErrorDetail"]["properties"]
    resp = api.post("/jobs", json={"task": "echo", "priority": "urgent", "max_attempts": 0})
    assert {d["field"] for d in resp.json()["details"]} == {"priority", "max_attempts"}


def test_wrong_method_is_405_with_allow(api: Any) -> None:
    resp = api.delete("/jobs")
    assert resp.status_code == 405 and _error(resp)["code"] == "method_not_allowed"
    assert {"GET", "POST"} <= {m.strip() for m in resp.headers["allow"].split(",")}


def test_unknown_route_is_json_404(api: Any) -> None:
    resp = api.get("/nope")
    assert resp.status_code == 404 and _error(resp)["code"] == "not_found"


def test_unreachable_dependencies_give_503_not_500(settings: Any) -> None:
    from fastapi.testclient import TestClient

    from app.api.app import create_app
    from app.cli.dev import SqsServer

    dead_port = SqsServer().start()
    dead_port.stop()  # a port nothing listens on any more
    broken = settings.model_copy(
        update={
            "sqs_endpoint_url": dead_port.endpoint,
            "database_url": "postgresql://nobody@127.0.0.1:1/none",
            "dispatcher": False,
        }
    )
    with TestClient(create_app(broken)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert set(ready.json()["checks"]) == {"database", "sqs"}
        assert "ok" not in ready.json()["checks"].values()
        submit = client.post("/jobs", json={"task": "echo"})
        assert submit.status_code == 503 and _error(submit)["code"] == "database_unavailable"
        assert submit.headers["retry-after"]
