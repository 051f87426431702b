"""The built-in `http` task and its egress guard, against a scripted server on 127.0.0.1.

Unit level: the handler called directly (what it returns, what it raises, what it refuses).
End to end: the real API, an in-process worker, PostgreSQL and the SQS server.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from app.config import Settings, get_settings
from app.egress import SETTING, EgressDenied, EgressPolicy, refusal_reason
from app.errors import InvalidInput
from app.tasks.http import (
    DEFAULT_BODY_BYTES,
    MAX_RETRY_AFTER_SECONDS,
    _decode,
    retry_after_seconds,
)
from app.tasks.registry import REGISTRY, JobContext
from jobq import PermanentError, Retry, RetryableError
from tests.helpers import wait_for
from tests.http_server import BINARY, ScriptedServer


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    """The scripted server, on a random port of 127.0.0.1, stopped after the test."""
    srv = ScriptedServer().start()
    yield srv
    srv.stop()


def _set_allow_list(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(SETTING, raising=False)
    else:
        monkeypatch.setenv(SETTING, value)
    get_settings.cache_clear()  # the handler reads the process settings


@pytest.fixture
def default_policy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """JOBQ_HTTP_ALLOWED_NETWORKS unset: public addresses only."""
    _set_allow_list(monkeypatch, None)
    yield
    get_settings.cache_clear()


@pytest.fixture
def allow_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """JOBQ_HTTP_ALLOWED_NETWORKS=127.0.0.1/32, so the scripted server may be called."""
    _set_allow_list(monkeypatch, "127.0.0.1/32")
    yield
    get_settings.cache_clear()


def _ctx() -> JobContext:
    return JobContext(job_id=uuid.uuid4(), task="http", attempt=1, max_attempts=3)


def _run(payload: dict[str, Any]) -> dict[str, Any]:
    """Call the registered handler the way the worker does: parse, then run."""
    spec = REGISTRY.get("http")
    result: dict[str, Any] = spec.handler(spec.parse_payload(payload), _ctx())
    return result


def _raised(payload: dict[str, Any]) -> BaseException:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the test checks the exact type
        _run(payload)
    return caught.value


# -- the guard refuses by default --------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("http://127.0.0.1:{port}/ok", "loopback"),
        ("http://[::1]:{port}/ok", "loopback"),
        ("http://localhost:{port}/ok", "loopback"),
        ("http://[::ffff:127.0.0.1]:{port}/ok", "loopback"),
        ("http://10.0.0.1:{port}/ok", "private"),
        ("http://192.168.1.20/ok", "private"),
        ("http://[fd00::1]/ok", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://0.0.0.0:{port}/ok", "unspecified"),
    ],
)
def test_default_refuses_non_public_destinations(
    server: ScriptedServer, default_policy: None, template: str, reason: str
) -> None:
    error = _raised({"url": template.format(port=server.port)})
    assert type(error) is PermanentError
    assert "refused to connect" in str(error) and reason in str(error)
    assert SETTING in str(error)  # says how to allow it
    assert server.hits == []  # nothing reached the server


@pytest.mark.parametrize(
    "target",
    [
        "http://10.0.0.1/admin",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.2:{port}/ok",  # loopback, but outside the allowed 127.0.0.1/32
        "http://[::1]:{port}/ok",
    ],
)
def test_a_redirect_to_a_refused_address_is_refused(
    server: ScriptedServer, allow_loopback: None, target: str
) -> None:
    error = _raised({"url": server.url(f"/redirect?to={target.format(port=server.port)}")})
    assert type(error) is PermanentError and "refused to connect" in str(error)
    assert [h.path for h in server.hits] == ["/redirect"]


def test_a_name_with_any_refused_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, default_policy: None
) -> None:
    _fake_dns(monkeypatch, {"mixed.test": [["93.184.216.34", "10.0.0.5"]]})
    error = _raised({"url": "http://mixed.test/"})
    assert type(error) is PermanentError
    assert "mixed.test (10.0.0.5)" in str(error) and "private" in str(error)


def test_connects_to_the_address_it_vetted(
    monkeypatch: pytest.MonkeyPatch, server: ScriptedServer, allow_loopback: None
) -> None:
    # A rebinding name: vetted as 127.0.0.1 (allowed), then it would answer 10.0.0.1. The
    # connection must use the vetted answer, from the one lookup made.
    lookups = _fake_dns(monkeypatch, {"api.example.test": [["127.0.0.1"], ["10.0.0.1"]]})
    result = _run({"url": server.url("/echo", host="api.example.test")})
    assert result["status"] == 200 and lookups == ["api.example.test"]
    assert server.hits[0].headers["host"] == f"api.example.test:{server.port}"


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """Resolve the given .test names to successive answers; the list of names looked up."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        ips = answers[host][min(len(lookups), len(answers[host])) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ips]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("64:ff9b::a00:1", "private"),  # NAT64 form of 10.0.0.1
        ("2002:a00:1::1", "private"),  # 6to4 form of 10.0.0.1
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.0.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("fec0::1", "reserved"),
        ("100.64.0.1", "globally routable"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("64:ff9b::808:808", None),  # NAT64 form of 8.8.8.8
    ],
)
def test_refusal_reasons(address: str, reason: str | None) -> None:
    found = refusal_reason(ipaddress.ip_address(address))
    assert (found is None) if reason is None else (found is not None and reason in found)


def test_allowed_networks_cover_mapped_forms_and_nothing_else() -> None:
    policy = EgressPolicy([ipaddress.ip_network("10.0.0.0/8")])
    policy.check(ipaddress.ip_address("10.1.2.3"), "a")
    policy.check(ipaddress.ip_address("::ffff:10.1.2.3"), "a")
    with pytest.raises(EgressDenied, match="192.168.1.1: a private address"):
        policy.check(ipaddress.ip_address("192.168.1.1"), "192.168.1.1")


def test_allow_list_setting_is_validated() -> None:
    assert Settings(http_allowed_networks=" 10.0.0.0/8, ::1/128 ").http_allowed_network_list == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    with pytest.raises(ValidationError, match="CIDR"):
        Settings(http_allowed_networks="10.0.0.0/8,not-a-network")


# -- outcomes by status ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "error", "in_seconds"),
    [
        ("/status/404", PermanentError, None),
        ("/status/400", PermanentError, None),
        ("/status/401", PermanentError, None),
        ("/status/500", RetryableError, None),
        ("/status/502", RetryableError, None),
        ("/status/408", RetryableError, None),
        ("/status/429", RetryableError, None),  # no Retry-After: the usual backoff
        ("/status/429?retry_after=7", Retry, 7.0),
        ("/status/503?retry_after=120", Retry, 120.0),
        ("/status/429?retry_after=soon", RetryableError, None),  # unparseable: backoff
    ],
)
def test_status_decides_the_outcome(
    server: ScriptedServer,
    allow_loopback: None,
    path: str,
    error: type[Exception],
    in_seconds: float | None,
) -> None:
    raised = _raised({"url": server.url(path)})
    assert type(raised) is error
    assert getattr(raised, "in_seconds", None) == in_seconds


def test_failure_message_names_status_request_and_body(
    server: ScriptedServer, allow_loopback: None
) -> None:
    error = _raised({"url": server.url("/status/404?token=secret"), "method": "DELETE"})
    text = str(error)
    assert text.startswith(f"HTTP 404 Not Found from DELETE {server.url('/status/404')}")
    assert "status body text" in text and "secret" not in text


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    in_90 = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after_seconds(in_90, now=now) == 90
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0  # past: now
    assert retry_after_seconds(" 12 ") == 12
    assert retry_after_seconds("99999999") == MAX_RETRY_AFTER_SECONDS
    assert retry_after_seconds("-5") is None and retry_after_seconds("") is None


def test_timeout_is_retryable_and_bounded(server: ScriptedServer, allow_loopback: None) -> None:
    started = time.monotonic()
    error = _raised({"url": server.url("/slow"), "timeout_seconds": 0.3})
    assert type(error) is RetryableError and "timed out after 0.3 s" in str(error)
    assert time.monotonic() - started < 5  # did not wait for the stalled answer (10 s)


def test_connection_refused_is_retryable(allow_loopback: None) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    error = _raised({"url": f"http://127.0.0.1:{port}/"})
    assert type(error) is RetryableError and "ConnectError" in str(error)


# -- the result --------------------------------------------------------------------------------


def test_success_result_shape(server: ScriptedServer, allow_loopback: None) -> None:
    result = _run({"url": server.url("/ok")})
    assert set(result) == {
        "status",
        "headers",
        "body",
        "body_encoding",
        "truncated",
        "url",
        "elapsed_ms",
    }
    assert result["status"] == 200 and result["body"] == '{"ok": true}'
    assert result["body_encoding"] == "text" and result["truncated"] is False
    assert result["headers"]["content-type"] == "application/json"
    assert result["headers"]["x-request-id"] == "r-1"
    assert result["url"] == server.url("/ok") and result["elapsed_ms"] >= 0


def test_named_response_headers_replace_the_default_set(
    server: ScriptedServer, allow_loopback: None
) -> None:
    result = _run({"url": server.url("/ok"), "response_headers": ["X-Request-Id", "X-Absent"]})
    assert result["headers"] == {"x-request-id": "r-1"}


def test_body_is_capped(server: ScriptedServer, allow_loopback: None) -> None:
    default = _run({"url": server.url("/large")})
    assert default["truncated"] is True and len(default["body"]) == DEFAULT_BODY_BYTES
    small = _run({"url": server.url("/large"), "max_body_bytes": 10})
    assert small["body"] == "x" * 10 and small["truncated"] is True
    exact = _run({"url": server.url("/large?size=100"), "max_body_bytes": 100})
    assert exact["body"] == "x" * 100 and exact["truncated"] is False


def test_binary_body_is_base64(server: ScriptedServer, allow_loopback: None) -> None:
    result = _run({"url": server.url("/binary")})
    assert result["body_encoding"] == "base64"
    assert base64.b64decode(result["body"]) == BINARY


def test_a_cut_character_is_dropped_not_turned_into_base64() -> None:
    data = "ééé".encode()[:5]  # two whole characters and half of the third
    assert _decode(data, "utf-8", truncated=True) == ("éé", "text")
    assert _decode(data, "utf-8", truncated=False)[1] == "base64"  # complete, but invalid


def test_request_carries_method_headers_and_body(
    server: ScriptedServer, allow_loopback: None
) -> None:
    sent = {"method": "POST", "headers": {"X-Token": "t-1"}, "json": {"a": [1, 2]}}
    _run({"url": server.url("/echo"), **sent})
    _run({"url": server.url("/echo"), "method": "PUT", "text": "héllo"})
    as_json, as_text = server.hits
    assert as_json.method == "POST" and as_json.body == b'{"a":[1,2]}'
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.headers["x-token"] == "t-1"
    assert as_json.headers["accept-encoding"] == "identity"
    assert as_text.method == "PUT" and as_text.body == "héllo".encode()
    assert as_text.headers["content-type"] == "text/plain; charset=utf-8"


def test_redirects(server: ScriptedServer, allow_loopback: None) -> None:
    followed = _run({"url": server.url("/redirect?to=/ok")})
    assert followed["status"] == 200 and followed["url"] == server.url("/ok")
    kept = _run({"url": server.url("/redirect?to=/ok"), "follow_redirects": False})
    assert kept["status"] == 302 and kept["headers"]["location"] == "/ok"
    loop = _raised({"url": server.url("/loop")})
    assert type(loop) is PermanentError and "redirects" in str(loop)
    ftp = _raised({"url": server.url("/redirect?to=ftp://example.com/file")})
    assert type(ftp) is PermanentError


def test_head_has_no_body(server: ScriptedServer, allow_loopback: None) -> None:
    result = _run({"url": server.url("/ok"), "method": "HEAD"})
    assert result["status"] == 200 and result["body"] == "" and result["truncated"] is False


# -- payload validation ------------------------------------------------------------------------

URL = "https://api.example.com/v1"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "payload.url"),
        ({"url": "ftp://example.com/file"}, "payload.url"),
        ({"url": "http://"}, "payload.url"),
        ({"url": "not a url at all"}, "payload.url"),
        ({"url": URL, "method": "BREW"}, "payload.method"),
        ({"url": URL, "json": {"a": 1}, "text": "b"}, "payload.text"),
        ({"url": URL, "timeout_seconds": 0}, "payload.timeout_seconds"),
        ({"url": URL, "timeout_seconds": 121}, "payload.timeout_seconds"),
        ({"url": URL, "max_body_bytes": 2 * 1024 * 1024}, "payload.max_body_bytes"),
        ({"url": URL, "headers": {"Host": "internal"}}, "payload.headers"),
        ({"url": URL, "headers": {"Content-Length": "5"}}, "payload.headers"),
        ({"url": URL, "headers": {"bad name": "x"}}, "payload.headers"),
        ({"url": URL, "headers": {"X-A": "a\r\nX-B: b"}}, "payload.headers"),
        ({"url": URL, "headers": {f"X-{i}": "v" for i in range(51)}}, "payload.headers"),
        ({"url": URL, "headers": {"X-Big": "v" * 20_000}}, "payload.headers"),
        ({"url": URL, "response_headers": ["ok", "not ok"]}, "payload.response_headers"),
        ({"url": URL, "surprise": 1}, "payload.surprise"),
    ],
)
def test_invalid_payloads_name_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        REGISTRY.validate_payload("http", payload)
    assert caught.value.field == field


def test_api_rejects_a_bad_http_payload_with_422(api: Any) -> None:
    for payload, field in [
        ({"url": "file:///etc/passwd"}, "payload.url"),
        ({"url": URL, "json": [1], "text": "x"}, "payload.text"),
        ({"url": URL, "timeout_seconds": 3600}, "payload.timeout_seconds"),
    ]:
        resp = api.post("/jobs", json={"task": "http", "payload": payload})
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["field"] == field


# -- end to end: API + worker + PostgreSQL + SQS -----------------------------------------------


def _submit(api: Any, payload: dict[str, Any], **job: Any) -> str:
    resp = api.post("/jobs", json={"task": "http", "payload": payload, **job})
    assert resp.status_code == 201, resp.text
    job_id: str = resp.json()["id"]
    return job_id


def _finished(api: Any, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    def check() -> dict[str, dict[str, Any]]:
        jobs = {i: api.get(f"/jobs/{i}").json() for i in job_ids}
        done = all(j["status"] in ("succeeded", "failed") for j in jobs.values())
        return jobs if done else {}

    return wait_for(check, timeout=60, what="http jobs to finish")


def _errors(api: Any, job_id: str) -> list[str]:
    return [a["error"] or "" for a in api.get(f"/jobs/{job_id}/attempts").json()]


def test_http_jobs_end_to_end(
    api: Any, worker_factory: Any, server: ScriptedServer, allow_loopback: None
) -> None:
    worker_factory()
    ids = {
        "flaky": _submit(api, {"url": server.url("/fail-once?key=e2e")}),
        "missing": _submit(api, {"url": server.url("/status/404")}),
        "limited": _submit(api, {"url": server.url("/limited-once?key=e2e&after=1")}),
        "slow": _submit(api, {"url": server.url("/slow"), "timeout_seconds": 0.5}, max_attempts=2),
        "large": _submit(api, {"url": server.url("/large"), "method": "GET"}),
        "posted": _submit(api, {"url": server.url("/echo"), "method": "POST", "json": {"n": 1}}),
    }
    jobs = _finished(api, list(ids.values()))
    got = {name: jobs[job_id] for name, job_id in ids.items()}

    flaky = got["flaky"]
    assert (flaky["status"], flaky["attempts"]) == ("succeeded", 2)
    assert flaky["result"]["status"] == 200 and flaky["result"]["body"] == "fine"
    assert flaky["result"]["truncated"] is False and flaky["result"]["body_encoding"] == "text"
    assert "content-type" in flaky["result"]["headers"]
    assert isinstance(flaky["result"]["elapsed_ms"], int | float)
    assert "HTTP 500" in _errors(api, ids["flaky"])[0]

    assert (got["missing"]["status"], got["missing"]["attempts"]) == ("failed", 1)
    assert "HTTP 404" in (got["missing"]["error"] or "")

    assert (got["limited"]["status"], got["limited"]["attempts"]) == ("succeeded", 2)
    assert "HTTP 429" in _errors(api, ids["limited"])[0]
    assert "Retry-After: 1 s" in _errors(api, ids["limited"])[0]

    assert (got["slow"]["status"], got["slow"]["attempts"]) == ("failed", 2)
    assert all("timed out" in e for e in _errors(api, ids["slow"]))

    large = got["large"]["result"]
    assert got["large"]["status"] == "succeeded" and large["truncated"] is True
    assert len(large["body"]) == DEFAULT_BODY_BYTES

    assert got["posted"]["status"] == "succeeded"
    assert '"body": "{\\"n\\":1}"' in got["posted"]["result"]["body"]


def test_http_job_to_loopback_is_refused_by_default(
    api: Any, worker_factory: Any, server: ScriptedServer, default_policy: None
) -> None:
    worker_factory()
    job_id = _submit(api, {"url": server.url("/ok")})
    job = _finished(api, [job_id])[job_id]
    assert (job["status"], job["attempts"]) == ("failed", 1)  # permanent: not retried
    assert "refused to connect to 127.0.0.1: a loopback address" in (job["error"] or "")
    assert server.hits == []
