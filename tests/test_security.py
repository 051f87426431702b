"""API keys (env and table), scopes, the dashboard's basic auth, rate limits, start-up refusal,
and secrets kept out of logs."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.errors import JobqError
from tests.helpers import READ_KEY, ROOT, SUBMIT_KEY, settings_env, wait_for


@pytest.fixture
def secured(settings: Any) -> Iterator[Any]:
    """The app with auth on and two env keys: one submit, one read-only."""
    s = settings.model_copy(
        update={"auth": "required", "api_keys": f"ci:submit:{SUBMIT_KEY},viewer:read:{READ_KEY}"}
    )
    with TestClient(create_app(s)) as client:
        yield client


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_every_endpoint_but_probes_requires_a_key(secured: Any) -> None:
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200
    for method, path in [
        ("GET", "/jobs"),
        ("POST", "/jobs"),
        ("GET", "/stats"),
        ("GET", "/metrics"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("POST", "/dlq/redrive"),
    ]:
        resp = secured.request(method, path)
        assert resp.status_code == 401, (method, path)
        assert resp.json()["error"]["code"] == "unauthorized"
        assert resp.headers["www-authenticate"] == "Bearer"
    bad = secured.get("/jobs", headers=_auth("wrong-key-0123456789"))
    assert bad.status_code == 401
    assert secured.get("/jobs", headers={"Authorization": "Bearer"}).status_code == 401
    assert secured.get("/jobs", headers={"Authorization": "Token x"}).status_code == 401


def test_scopes(secured: Any) -> None:
    job = secured.post("/jobs", json={"task": "echo"}, headers=_auth(SUBMIT_KEY))
    assert job.status_code == 201
    assert secured.get(f"/jobs/{job.json()['id']}", headers=_auth(READ_KEY)).status_code == 200
    denied = secured.post("/jobs", json={"task": "echo"}, headers=_auth(READ_KEY))
    assert denied.status_code == 403 and "read-only" in denied.json()["error"]["message"]
    cancel = secured.post(f"/jobs/{job.json()['id']}/cancel", headers=_auth(READ_KEY))
    assert cancel.status_code == 403


def test_dashboard_uses_basic_auth_with_the_same_keys(secured: Any) -> None:
    challenge = secured.get("/dashboard")
    assert challenge.status_code == 401
    assert challenge.headers["www-authenticate"].startswith("Basic")
    basic = base64.b64encode(f"anyone:{READ_KEY}".encode()).decode()
    assert secured.get("/dashboard", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    garbage = secured.get("/dashboard", headers={"Authorization": "Basic !!!"})
    assert garbage.status_code == 401


def test_table_keys_create_use_revoke(settings: Any, database_url: str) -> None:
    def jobq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", *args],
            env=settings_env(settings),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = jobq("create", "deployer", "--scope", "submit", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    listed = jobq("list", "--json")
    assert [k["name"] for k in json.loads(listed.stdout)] == ["deployer"]
    assert key not in listed.stdout  # only the hash is stored
    assert jobq("create", "deployer").returncode == 1  # names are unique

    s = settings.model_copy(update={"auth": "required", "keys_reload_seconds": 0.2})
    with TestClient(create_app(s)) as client:
        assert client.post("/jobs", json={"task": "echo"}, headers=_auth(key)).status_code == 201
        assert jobq("revoke", "deployer").returncode == 0
        wait_for(
            lambda: client.get("/jobs", headers=_auth(key)).status_code == 401,
            what="the revoked key to stop working",
        )
    with pytest.raises(JobqError, match="no API keys"), TestClient(create_app(s)):
        pass
    assert jobq("revoke", "nobody").returncode == 1


def test_production_refuses_to_start_without_keys(settings: Any) -> None:
    s = settings.model_copy(update={"auth": "required", "api_keys": ""})
    with pytest.raises(JobqError, match="JOBQ_AUTH=disabled"), TestClient(create_app(s)):
        pass
    weak = settings.model_copy(update={"auth": "required", "api_keys": "submit:short"})
    with pytest.raises(JobqError, match="16"), TestClient(create_app(weak)):
        pass


def test_submit_rate_limit_per_key_gives_429_with_retry_after(settings: Any) -> None:
    s = settings.model_copy(
        update={
            "auth": "required",
            "api_keys": f"a:submit:{SUBMIT_KEY},b:submit:{READ_KEY.replace('read', 'subm')}",
            "submit_rate": 0.5,
            "submit_burst": 3,
        }
    )
    with TestClient(create_app(s)) as client:
        codes = [
            client.post("/jobs", json={"task": "echo"}, headers=_auth(SUBMIT_KEY)).status_code
            for _ in range(5)
        ]
        assert codes == [201, 201, 201, 429, 429]
        limited = client.post("/jobs", json={"task": "echo"}, headers=_auth(SUBMIT_KEY))
        assert limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        other = READ_KEY.replace("read", "subm")
        assert client.post("/jobs", json={"task": "echo"}, headers=_auth(other)).status_code == 201
        assert client.get("/jobs", headers=_auth(SUBMIT_KEY)).status_code == 200  # reads are free


def test_secrets_stay_out_of_logs(settings: Any, capsys: Any) -> None:
    s = settings.model_copy(update={"auth": "required", "api_keys": f"ci:submit:{SUBMIT_KEY}"})
    with TestClient(create_app(s)) as client:
        client.post(
            "/jobs",
            json={"task": "echo", "payload": {"card": "4111-1111-1111-1111"}},
            headers=_auth(SUBMIT_KEY),
        )
        client.get("/jobs", headers=_auth("not-the-key-0123456789"))
    out = capsys.readouterr()
    logs = out.out + out.err
    assert "job submitted" in logs
    assert SUBMIT_KEY not in logs and "4111-1111" not in logs


def test_database_password_is_masked(settings: Any) -> None:
    from app.db import masked_url

    url = "postgresql://jobq:s3cr3t-pw@db.internal:5432/jobq"
    assert "s3cr3t-pw" not in masked_url(url) and "***" in masked_url(url)
    env = settings_env(settings, DATABASE_URL="postgresql://jobq:s3cr3t-pw@127.0.0.1:1/jobq")
    failed = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode != 0
    assert "s3cr3t-pw" not in failed.stdout + failed.stderr


def test_starts_while_postgres_is_down_and_fails_closed(settings: Any) -> None:
    down = {"database_url": "postgresql://nobody@127.0.0.1:1/none", "dispatcher": False}
    with_env = settings.model_copy(
        update={**down, "auth": "required", "api_keys": f"ci:submit:{SUBMIT_KEY}"}
    )
    with TestClient(create_app(with_env)) as client:
        assert client.get("/readyz").status_code == 503
        assert client.get("/jobs", headers=_auth(SUBMIT_KEY)).status_code == 503
    table_only = settings.model_copy(update={**down, "auth": "required", "api_keys": ""})
    with TestClient(create_app(table_only)) as client:
        assert client.get("/jobs", headers=_auth(SUBMIT_KEY)).status_code == 401
