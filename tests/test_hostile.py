"""Hostile input: every filter and body field gets quotes, NUL bytes, huge numbers, unicode,
deep nesting; the answer is a 4xx naming the field (or a correct result), never a 500."""

from __future__ import annotations

from typing import Any

import pytest

HOSTILE_STRINGS = [
    "' OR 1=1 --",
    '"; DROP TABLE jobs; --',
    "a\x00b",
    "\x00",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✓ ﷽ \u202e",
    "%",
    "_",
    "\\",
    "x" * 10_000,
    "-1",
    "99999999999999999999999999999",
]
FILTERS = [
    "status",
    "task",
    "idempotency_key",
    "cursor",
    "created_after",
    "created_before",
    "limit",
]


@pytest.mark.parametrize("name", FILTERS)
def test_hostile_values_in_every_list_filter(api: Any, name: str) -> None:
    api.post("/jobs", json={"task": "echo"})
    for value in HOSTILE_STRINGS:
        resp = api.get("/jobs", params={name: value})
        assert resp.status_code in (200, 422), (name, value, resp.text)
        if resp.status_code == 422:
            assert resp.json()["error"]["field"] == name
        elif name in ("task", "idempotency_key"):
            assert resp.json()["items"] == []  # matched literally, never as SQL


@pytest.mark.parametrize("value", HOSTILE_STRINGS)
def test_hostile_values_in_body_fields(api: Any, value: str) -> None:
    for body, field in (
        ({"task": value}, "task"),
        ({"task": "echo", "idempotency_key": value}, "idempotency_key"),
        ({"task": "echo", "priority": value}, "priority"),
    ):
        resp = api.post("/jobs", json=body)
        assert resp.status_code in (201, 422), (body, resp.text)
        if resp.status_code == 422:
            assert resp.json()["error"]["field"] == field
    stored = api.post("/jobs", json={"task": "echo", "payload": {"v": value.replace("\x00", "")}})
    assert stored.status_code == 201
    assert api.get(f"/jobs/{stored.json()['id']}").json()["payload"] == {
        "v": value.replace("\x00", "")
    }


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"task": "echo", "payload": {"x": "a\\u0000b"}}', "payload.x"),
        ('{"task": "echo", "payload": {"a\\u0000": 1}}', "payload"),
        ('{"task": "echo", "payload": {"n": 1e999}}', "payload.n"),
        ('{"task": "echo", "payload": {"n": NaN}}', "payload.n"),
        ('{"task": "echo", "payload": {"n": -Infinity}}', "payload.n"),
        ('{"task": "echo", "payload": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}", "payload"),
        ('{"task": "echo", "payload": ' + "[" * 5000 + "]" * 5000 + "}", "body"),
        ('{"task": "echo", "payload": {"n": ' + "9" * 5000 + "}}", "body"),
        ('{"task": "echo", "max_attempts": 1e400}', "max_attempts"),
        ('{"task": "echo", "delay_seconds": 99999999999999999999}', "delay_seconds"),
    ],
)
def test_payloads_postgres_cannot_store_are_422(api: Any, raw: str, field: str, db: Any) -> None:
    resp = api.post("/jobs", content=raw.encode(), headers={"content-type": "application/json"})
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["error"]["field"] == field
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs")
        assert cur.fetchone()[0] == 0


def test_big_integers_and_unicode_round_trip(api: Any) -> None:
    payload = {"big": 10**300, "neg": -(10**300), "s": "日本語 🚀", "nested": [[[{"k": None}]]]}
    job = api.post("/jobs", json={"task": "echo", "payload": payload}).json()
    assert api.get(f"/jobs/{job['id']}").json()["payload"] == payload


def test_hostile_redrive_and_path_values(api: Any) -> None:
    assert api.post("/dlq/redrive", json={"task": "a\x00"}).status_code == 422
    assert api.post("/dlq/redrive", json={"limit": 10**30}).status_code == 422
    for path in ("/jobs/%00", "/jobs/'%20OR%201=1", "/jobs/" + "9" * 5000, "/jobs/..%2F..%2Fetc"):
        assert api.get(path).status_code in (404, 422), path
        assert api.post(path + "/cancel").status_code in (404, 422), path
