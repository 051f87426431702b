"""The dashboard's flow-control actions below the browser: the audit log naming the key,
CSRF and bad input on the new forms, read-only keys (no buttons, 403), run now of a schedule
over HTTP, and the dispatcher's order (queued is committed before a due job is sent)."""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from tests.helpers import READ_KEY, SUBMIT_KEY, job_statuses, wait_for


def _rows(db: Any, sql: str, *args: Any) -> list[Any]:
    with db.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


@pytest.fixture
def keyed(settings: Any) -> Iterator[TestClient]:
    """The app with auth on (a submit key named ops, a read key named viewer)."""
    keys = f"ops:submit:{SUBMIT_KEY},viewer:read:{READ_KEY}"
    s = settings.model_copy(update={"auth": "required", "api_keys": keys})
    with TestClient(create_app(s), headers={"Authorization": f"Bearer {SUBMIT_KEY}"}) as client:
        assert client.get("/dashboard/queues").status_code == 200  # the CSRF cookie
        yield client


def _post(client: Any, path: str, **fields: str) -> Any:
    data = {"csrf_token": client.cookies.get("jobq_csrf"), **fields}
    return client.post(
        path, data=data, headers={"Origin": "http://testserver"}, follow_redirects=False
    )


def _schedule(client: Any, name: str = "nightly") -> str:
    made = client.post("/schedules", json={"name": name, "task": "echo", "cron": "0 3 * * *"})
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def test_flow_actions_are_audited_with_the_keys_name(keyed: Any, db: Any, caplog: Any) -> None:
    schedule = _schedule(keyed)
    root = keyed.post("/jobs", json={"task": "echo", "run_at": "2099-01-01T00:00:00Z"}).json()
    child = keyed.post("/jobs", json={"task": "echo", "depends_on": [root["id"]]}).json()
    with caplog.at_level(logging.INFO, logger="jobq.audit"):
        for fields in (
            {"scope": "queue", "name": "default", "op": "pause"},
            {"scope": "task", "name": "echo", "op": "limits", "max_concurrency": "3"},
        ):
            done = _post(keyed, "/dashboard/controls", **fields)
            assert done.status_code == 303 and "refused" not in done.headers["location"]
        assert _post(keyed, f"/dashboard/schedules/{schedule}/run").status_code == 303
        done = _post(keyed, f"/dashboard/workflows/{root['id']}/cancel")
        assert done.status_code == 303
    audit = [r for r in caplog.records if r.name == "jobq.audit"]
    assert [r.getMessage() for r in audit] == [
        "dashboard pause of queue default by key:ops",
        "dashboard limits of task echo by key:ops",
        f"dashboard schedule run of schedule {schedule} by key:ops",
        f"dashboard cancel of workflow {root['id']} by key:ops",
    ]
    assert all(r.actor == "key:ops" for r in audit)  # type: ignore[attr-defined]
    assert audit[1].max_concurrency == 3  # type: ignore[attr-defined]
    assert audit[2].job_id  # type: ignore[attr-defined]
    assert set(job_statuses(db, [root["id"], child["id"]]).values()) == {"cancelled"}
    # A job id that names no workflow: said on the page, not an error page.
    lonely = keyed.post("/jobs", json={"task": "echo", "run_at": "2099-01-01T00:00:00Z"}).json()
    refused = _post(keyed, f"/dashboard/workflows/{lonely['id']}/cancel")
    assert "cancel+refused" in refused.headers["location"]
    assert _rows(db, "SELECT count(*) FROM jobs WHERE schedule_id = %s", schedule) == [(1,)]


def test_flow_actions_refuse_bad_input_and_foreign_posts(keyed: Any, db: Any) -> None:
    schedule = _schedule(keyed)
    bad = _post(keyed, "/dashboard/controls", scope="queue", name="Not A Queue", op="pause")
    assert bad.status_code == 303 and "refused" in bad.headers["location"]
    assert "queue" in bad.headers["location"]
    limits = _post(
        keyed, "/dashboard/controls", scope="queue", name="default", op="limits", rate_limit="1/s"
    )
    assert "limits+are+per+task" in limits.headers["location"]
    assert _post(
        keyed, "/dashboard/controls", scope="tenant", name="x", op="pause"
    ).status_code == (422)
    assert _post(keyed, f"/dashboard/schedules/{schedule}/explode").status_code == 422
    missing = _post(keyed, "/dashboard/schedules/00000000-0000-0000-0000-000000000000/run")
    assert "run+refused" in missing.headers["location"]
    # CSRF: no token, or another origin, is refused before anything changes.
    for path, fields in (
        ("/dashboard/controls", {"scope": "queue", "name": "default", "op": "pause"}),
        (f"/dashboard/schedules/{schedule}/disable", {}),
    ):
        assert keyed.post(
            path, data=fields, headers={"Origin": "http://testserver"}
        ).status_code == (403)
        token = {"csrf_token": keyed.cookies.get("jobq_csrf"), **fields}
        assert keyed.post(path, data=token, headers={"Origin": "http://evil"}).status_code == 403
    assert _rows(db, "SELECT count(*) FROM flow_controls") == [(0,)]
    assert _rows(db, "SELECT enabled FROM schedules") == [(True,)]


def test_read_only_key_sees_no_flow_buttons_and_gets_403(keyed: Any, db: Any) -> None:
    schedule = _schedule(keyed)
    root = keyed.post("/jobs", json={"task": "echo"}).json()["id"]
    child = keyed.post("/jobs", json={"task": "echo", "depends_on": [root]}).json()["id"]
    viewer = {"Authorization": "Basic " + base64.b64encode(f"v:{READ_KEY}".encode()).decode()}
    for path in ("/dashboard/queues", "/dashboard/schedules", f"/dashboard/workflows/{root}"):
        page = keyed.get(path, headers=viewer)
        assert page.status_code == 200 and "read-only" in page.text
        assert "<button" not in page.text.split("<main>", 1)[1], path
    assert "<button" in keyed.get(f"/dashboard/workflows/{root}").text  # the submit key's
    token = keyed.cookies.get("jobq_csrf")
    for path, fields in (
        ("/dashboard/controls", {"scope": "queue", "name": "default", "op": "pause"}),
        ("/dashboard/controls", {"scope": "task", "name": "echo", "op": "limits"}),
        (f"/dashboard/schedules/{schedule}/run", {}),
        (f"/dashboard/schedules/{schedule}/disable", {}),
        (f"/dashboard/workflows/{root}/cancel", {}),
    ):
        refused = keyed.post(
            path,
            data={"csrf_token": token, **fields},
            headers={**viewer, "Origin": "http://testserver"},
        )
        assert refused.status_code == 403 and "read-only" in refused.text, path
    assert _rows(db, "SELECT count(*) FROM flow_controls") == [(0,)]
    assert _rows(db, "SELECT enabled FROM schedules") == [(True,)]
    assert set(job_statuses(db, [root, child]).values()) <= {"queued", "waiting"}
    assert _rows(db, "SELECT count(*) FROM jobs WHERE schedule_id IS NOT NULL") == [(0,)]


def test_run_now_through_the_api_keeps_the_next_run(api: Any, db: Any) -> None:
    made = _schedule(api, "weekly")
    before = api.get("/schedules/weekly").json()
    api.patch("/schedules/weekly", json={"enabled": False})  # a disabled schedule runs too
    ran = api.post("/schedules/weekly/run")
    assert ran.status_code == 200, ran.text
    job = ran.json()["job_id"]
    # Due at once: the dispatcher sends it (no worker here: it stays queued).
    wait_for(lambda: job_statuses(db, [job])[job] == "queued", what="the dispatcher")
    after = api.get(f"/schedules/{made}").json()
    assert after["last_job_id"] == job and after["last_run_at"]
    assert after["next_run_at"] == before["next_run_at"]
    assert api.get(f"/jobs/{job}").json()["schedule_id"] == made
    assert api.post("/schedules/nope/run").status_code == 404


class _SendSpy:
    """An SQS queue that records, at each send, the jobs' committed statuses (or fails)."""

    def __init__(self, sqs: Any, db: Any, *, fail: bool = False) -> None:
        self._sqs, self._db, self._fail = sqs, db, fail
        self.seen: list[dict[str, str]] = []

    def send_batch(self, rows: Any) -> Any:
        from app.errors import DependencyUnavailable

        self.seen.append(job_statuses(self._db, [str(r.job_id) for r in rows]))
        if self._fail:
            raise DependencyUnavailable("SQS is down (test)")
        return self._sqs.send_batch(rows)


def test_a_job_due_now_is_queued_before_its_message_is_sent(runtime: Any, db: Any) -> None:
    """A message sent without a delay can be received at once: its job must already be
    queued (committed), or the worker deletes it as a stale copy of a scheduled job."""
    from app.errors import DependencyUnavailable
    from app.outbox.dispatcher import Dispatcher

    ids = [str(uuid.uuid4()) for _ in range(2)]
    with db.cursor() as cur:
        for i in ids:
            cur.execute(
                "INSERT INTO jobs (id, task, status, payload, max_attempts, run_at) "
                "VALUES (%s, 'echo', 'scheduled', '{}', 3, now())",
                (i,),
            )
    spy = _SendSpy(runtime.sqs, db)
    dispatcher = Dispatcher(spy, runtime.sessions, after_seconds=0, interval_seconds=1)  # type: ignore[arg-type]
    assert dispatcher.promote_scheduled() == 1 + 1
    assert spy.seen == [dict.fromkeys(ids, "queued")]
    published = _rows(db, "SELECT published_at IS NOT NULL FROM jobs WHERE status = 'queued'")
    assert published == [(True,), (True,)]

    # A send that fails leaves the jobs queued and unconfirmed; the re-publish pass sends them.
    late = str(uuid.uuid4())
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO jobs (id, task, status, payload, max_attempts, run_at) "
            "VALUES (%s, 'echo', 'scheduled', '{}', 3, now())",
            (late,),
        )
    down = Dispatcher(
        _SendSpy(runtime.sqs, db, fail=True), runtime.sessions, after_seconds=0, interval_seconds=1
    )  # type: ignore[arg-type]
    with pytest.raises(DependencyUnavailable):
        down.promote_scheduled()
    assert _rows(db, "SELECT status, published_at FROM jobs WHERE id = %s", late) == [
        ("queued", None)
    ]
    assert dispatcher.run_once() == 1
    assert _rows(db, "SELECT published_at IS NOT NULL FROM jobs WHERE id = %s", late) == [(True,)]
