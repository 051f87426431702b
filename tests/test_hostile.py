"""Hostile input: every filter and body field gets quotes, NUL bytes, huge numbers, unicode,
deep nesting; the answer is a 4xx naming the field (or a correct result), never a 500."""

from __future__ import annotations

import http.client
import json
import random
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


# Lone UTF-16 surrogates: valid JSON escapes, but not text PostgreSQL (or UTF-8) can hold.
SURROGATE_BODIES = [
    ('{"task": "\\ud800"}', "task"),
    ('{"task": "echo", "idempotency_key": "\\ud800"}', "idempotency_key"),
    ('{"task": "echo", "idempotency_key": "k\\udfffk"}', "idempotency_key"),
    ('{"task": "echo", "payload": {"a": "\\ud800"}}', "payload.a"),
    ('{"task": "echo", "payload": {"\\udfff": 1}}', "payload"),
    ('{"task": "echo", "payload": {"l": ["ok", {"deep": "x\\udbff"}]}}', "payload.l.1.deep"),
    ('{"task": "echo", "\\ud800": 1}', "body"),  # an unknown field no string can name
]


@pytest.mark.parametrize(("raw", "field"), SURROGATE_BODIES)
@pytest.mark.parametrize("keyed", [False, True])
def test_lone_surrogates_are_422_naming_the_field(
    api: Any, db: Any, raw: str, field: str, keyed: bool
) -> None:
    headers = {"content-type": "application/json"}
    if keyed:  # the full route, not the fast path
        headers["Idempotency-Key"] = "surrogate-test"
    resp = api.post("/jobs", content=raw.encode(), headers=headers)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field
    batch = '{"jobs": [' + raw + "]}"
    resp = api.post("/jobs/batch", content=batch.encode(), headers=headers)
    assert resp.status_code in (200, 422), resp.text
    if resp.status_code == 200:  # a per-item error: the batch reports it
        assert resp.json()["items"][0]["error"]["field"] == f"jobs.0.{field}"
    else:
        assert resp.json()["error"]["field"] == f"jobs.0.{field}".removesuffix(".body")
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs")
        assert cur.fetchone()[0] == 0


def test_a_valid_surrogate_pair_is_one_character_and_stored(api: Any) -> None:
    rocket = "\\ud83d\\ude80"
    raw = f'{{"task": "echo", "idempotency_key": "{rocket}", "payload": {{"r": "{rocket}"}}}}'
    resp = api.post("/jobs", content=raw.encode(), headers={"content-type": "application/json"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["payload"] == {"r": "🚀"} and resp.json()["idempotency_key"] == "🚀"


@pytest.mark.parametrize("task", ["\\ud800", "a\\u0000"])
def test_redrive_filter_refuses_surrogates_and_nul(api: Any, task: str) -> None:
    raw = '{"task": "' + task + '"}'
    headers = {"content-type": "application/json"}
    resp = api.post("/dlq/redrive", content=raw.encode(), headers=headers)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == "task"


def _malformed_bodies(count: int, seed: int = 14) -> list[bytes]:
    """Bodies for POST /jobs: valid ones mutated (flipped, cut, spliced bytes), and the usual
    suspects (lone surrogates, NUL, invalid UTF-8, huge numbers, deep nesting, non-objects)."""
    rng = random.Random(seed)
    bases = [
        b'{"task": "echo", "payload": {"n": 1, "s": "text", "l": [1, 2, {"k": null}]}}',
        b'{"task": "echo", "idempotency_key": "fuzz-KEY", "payload": {"x": "y"}}',
        b'{"task": "echo", "priority": "high", "delay_seconds": 5, "max_attempts": 2}',
    ]
    splices = [
        b"\x00",
        b"\\u0000",
        b"\\ud800",
        b"\\udfff\\ud800",
        b"\xff",
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"9" * 400,
        b"1e999",
        b"-Infinity",
        b"NaN",
        b"[" * 3000,
        b"{" * 50,
        b'"',
        b"\\",
        b",",
        b"}",
        b"]",
        b":",
        b"\xef\xbb\xbf",
        b'"\\ud800":1,',
        b'"idempotency_key":"\\u0000",',
    ]
    fixed = [
        b"",
        b" ",
        b"null",
        b"[]",
        b"1",
        b'"echo"',
        b"{}",
        b'{"task": null}',
        b"\xef\xbb\xbf{}",
        b'{"task": "echo", "payload": []}',
        b'{"task": "echo", "task": "\\ud800"}',
        b'{"task": "echo", "idempotency_key": "k\\u0000", "payload": {"a": "\\u0000"}}',
        b'{"task": "echo", "idempotency_key": "\\ud800", "payload": {"\\ud800": "\\udc00"}}',
        '{"task": "echo"}'.encode("utf-16"),
        '{"task": "\ud800"}'.encode("utf-8", "surrogatepass"),
    ]
    bodies = list(fixed)
    while len(bodies) < count:
        body = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(body) + 1)
            kind = rng.random()
            if kind < 0.45:
                body[at:at] = rng.choice(splices)
            elif kind < 0.7 and body:
                body[min(at, len(body) - 1)] = rng.randrange(256)
            elif kind < 0.85:
                del body[at:]
            else:
                del body[at : at + rng.randint(1, 8)]
        bodies.append(bytes(body))
    return bodies


def _post_raw(host: str, port: int, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    """One POST /jobs on its own connection: the status and the parsed JSON body. Raises if
    the server drops the connection or sends an incomplete response."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", "/jobs", body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()  # IncompleteRead if Content-Length promised more than was sent
        assert resp.getheader("content-type", "").startswith("application/json"), raw[:200]
        return resp.status, json.loads(raw)
    finally:
        conn.close()


def test_fast_path_answers_every_malformed_body_with_a_json_4xx(live_api: str) -> None:
    host, port = live_api.removeprefix("http://").split(":")
    for index, body in enumerate(_malformed_bodies(300)):
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        if index % 5 == 4:  # keyed requests take the full route: the same promise holds
            headers["Idempotency-Key"] = f"fuzz-{index}"
        status, reply = _post_raw(host, int(port), body, headers)
        assert status < 500, (body[:200], status, reply)
        if status >= 400:
            assert set(reply["error"]) == {"code", "message", "field"}, (body[:200], reply)
        else:
            assert status in (200, 201) and reply["task"] == "echo", (body[:200], reply)
