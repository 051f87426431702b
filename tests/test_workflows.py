"""Workflows: depends_on, chains and fan-in from the SDK, parent failure policies, cancel."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from jobq import AsyncClient, Client, JobStatus, chain, group, job
from tests.helpers import api_process, start_worker_process, wait_for

S = JobStatus


def test_fan_in_callback_sees_both_results_across_two_apis_and_two_workers(
    settings: Any, db: Any, procs_dir: Any
) -> None:
    """group([a, b]).then(c) submitted through one API process, read through the other, run
    by two worker processes: c is queued by the completion of the last of a and b, and its
    handler sees both results in depends_on order."""
    workers = [start_worker_process(settings, procs_dir / f"w{i}.log") for i in range(2)]
    try:
        with (
            api_process(settings, procs_dir / "api1.log") as (url1, _),
            api_process(settings, procs_dir / "api2.log") as (url2, _),
        ):
            flow = group([job("echo", {"n": 1}), job("sleep", {"seconds": 0.5})]).then(
                job("fan_in")
            )
            with Client(url1) as client:
                run = client.submit_flow(flow)
                assert run.last.status == S.WAITING
                done = client.wait(run.last, timeout=60)
            assert done.status == S.SUCCEEDED, done
            assert done.result == {
                "parent_results": [{"n": 1}, {"slept": 0.5}],
                "statuses": ["succeeded", "succeeded"],
            }
            with Client(url2) as other:
                workflow = other.workflow(run.workflow_id)
            assert workflow.status == "succeeded" and workflow.counts == {"succeeded": 3}
            assert {(e.parent_id, e.child_id) for e in workflow.edges} == {
                (run.stages[0][0].id, run.last.id),
                (run.stages[0][1].id, run.last.id),
            }
            # Queued by the parent's completion, not by a poll: never before both finished.
            with db.cursor() as cur:
                cur.execute(
                    "SELECT max(finished_at) FROM jobs WHERE id = ANY(%s::uuid[])",
                    ([str(j.id) for j in run.stages[0]],),
                )
                parents_done = cur.fetchone()[0]
                cur.execute("SELECT started_at FROM jobs WHERE id = %s", (str(run.last.id),))
                assert cur.fetchone()[0] >= parents_done
    finally:
        for w in workers:
            w.terminate()
            w.wait(30)


def test_a_chain_runs_in_order(live_api: str, worker_factory: Any, db: Any) -> None:
    worker_factory()
    with Client(live_api) as client:
        run = client.submit_flow(chain(job("echo", {"i": 1}), job("echo", {"i": 2}), job("fan_in")))
        done = client.wait(run.last, timeout=60)
    assert done.result["parent_results"] == [{"i": 2}]
    with db.cursor() as cur:
        cur.execute(
            "SELECT started_at, finished_at FROM jobs WHERE id = ANY(%s::uuid[])"
            " ORDER BY started_at",
            ([str(j.id) for j in run.jobs],),
        )
        rows = cur.fetchall()
    assert all(rows[i][1] <= rows[i + 1][0] for i in range(len(rows) - 1))


def test_a_failed_parent_cancels_the_rest_of_the_chain(live_api: str, worker_factory: Any) -> None:
    worker_factory()
    with Client(live_api) as client:
        run = client.submit_flow(chain(job("permanent"), job("echo"), job("echo")))
        last = client.wait(run.last, timeout=60)
        assert last.status == S.CANCELLED and "parent" in (last.error or "")
        workflow = client.workflow(run.workflow_id)
    assert workflow.status == "failed"
    assert workflow.counts == {"failed": 1, "cancelled": 2}


def test_on_parent_failure_run_runs_the_callback_anyway(live_api: str, worker_factory: Any) -> None:
    worker_factory()
    flow = group([job("permanent"), job("echo", {"ok": True})]).then(job("fan_in"))

    async def go() -> Any:
        async with AsyncClient(live_api) as client:
            run = await client.submit_flow(flow.on_parent_failure("run"))
            return await client.wait(run.last, timeout=60)

    done = asyncio.run(go())
    assert done.status == S.SUCCEEDED
    assert done.result == {
        "parent_results": [None, {"ok": True}],
        "statuses": ["failed", "succeeded"],
    }


def test_cancel_a_workflow(live_api: str, worker_factory: Any) -> None:
    worker_factory()
    with Client(live_api) as client:
        run = client.submit_flow(chain(job("sleep", {"seconds": 30}), job("echo")))
        wait_for(lambda: client.get(run.jobs[0]).status == S.RUNNING, what="the first to run")
        cancelled = client.cancel_workflow(run.workflow_id)
        assert {j.id: j.status for j in cancelled.jobs}[run.last.id] == S.CANCELLED
        wait_for(lambda: client.workflow(run.workflow_id).final, what="the workflow to end")
        assert client.workflow(run.workflow_id).status == "cancelled"


def test_depends_on_a_finished_parent(api: Any, worker_factory: Any) -> None:
    worker_factory()
    parent = api.post("/jobs", json={"task": "echo", "payload": {"x": 1}}).json()
    wait_for(lambda: api.get(f"/jobs/{parent['id']}").json()["status"] == "succeeded")
    child = api.post("/jobs", json={"task": "fan_in", "depends_on": [parent["id"]]})
    assert child.status_code == 201, child.text
    assert child.json()["status"] == "queued" and child.json()["workflow_id"] == parent["id"]
    done = api.get(f"/jobs/{child.json()['id']}", params={"wait": 20}).json()
    assert done["result"]["parent_results"] == [{"x": 1}]
    failed = api.post("/jobs", json={"task": "permanent"}).json()
    wait_for(lambda: api.get(f"/jobs/{failed['id']}").json()["status"] == "failed")
    orphan = api.post("/jobs", json={"task": "echo", "depends_on": [failed["id"]]}).json()
    assert orphan["status"] == "cancelled"


def test_cancelling_a_waiting_parent_cascades(api: Any) -> None:
    # No worker: everything stays put until cancelled.
    a = api.post("/jobs", json={"task": "echo", "delay_seconds": 3600}).json()
    b = api.post("/jobs", json={"task": "echo", "depends_on": [a["id"]]}).json()
    c = api.post("/jobs", json={"task": "echo", "depends_on": [b["id"]]}).json()
    assert b["status"] == c["status"] == "waiting"
    assert api.post(f"/jobs/{b['id']}/cancel").json()["status"] == "cancelled"
    assert api.get(f"/jobs/{c['id']}").json()["status"] == "cancelled"
    assert api.get(f"/jobs/{a['id']}").json()["status"] in ("queued", "scheduled")
    assert api.get(f"/workflows/{a['id']}").json()["counts"]["cancelled"] == 2


def test_bad_depends_on_names_the_field(api: Any) -> None:
    missing = api.post(
        "/jobs", json={"task": "echo", "depends_on": [str(__import__("uuid").uuid4())]}
    )
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "depends_on"
    parent = api.post("/jobs", json={"task": "echo"}).json()
    delayed = api.post(
        "/jobs", json={"task": "echo", "depends_on": [parent["id"]], "delay_seconds": 5}
    )
    assert delayed.status_code == 422 and delayed.json()["error"]["field"] == "depends_on"
    assert api.get(f"/workflows/{parent['id']}").status_code == httpx.codes.NOT_FOUND


def test_a_wide_fan_in_is_queued_once(live_api: str, worker_factory: Any, db: Any) -> None:
    """30 parents finishing at once on two workers (batched completions, concurrent
    transactions): the callback is queued exactly once, after the last of them."""
    for _ in range(2):
        worker_factory(worker_concurrency=8)
    flow = group([job("echo", {"i": i}) for i in range(30)]).then(job("fan_in"))
    with Client(live_api) as client:
        run = client.submit_flow(flow)
        done = client.wait(run.last, timeout=90)
    assert done.status == S.SUCCEEDED and done.attempts == 1
    assert done.result["parent_results"] == [{"i": i} for i in range(30)]
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM job_attempts WHERE job_id = %s", (str(done.id),))
        assert cur.fetchone()[0] == 1


def test_plain_and_workflow_rows_submitted_together(api: Any) -> None:
    """A row with a workflow_id has a column plain rows lack: it takes the guarded path (the
    group commit inserts rows with the same columns together)."""
    wid = "3f8a3c1e-8c55-4d1f-9a44-2b1f7f0f4e11"
    batch = api.post(
        "/jobs/batch", json={"jobs": [{"task": "echo", "workflow_id": wid}, {"task": "echo"}]}
    ).json()
    assert [i["status"] for i in batch["items"]] == ["created", "created"]
    one = api.post("/jobs", json={"task": "echo", "workflow_id": wid})
    assert one.status_code == 201 and one.json()["workflow_id"] == wid
    assert api.get(f"/workflows/{wid}").json()["counts"] == {"queued": 2}


def test_a_parent_failed_by_the_dead_letter_path_settles_its_children(
    api: Any, runtime: Any
) -> None:
    """fail_dead_lettered (a job that crashed its workers, or kept reaching the DLQ) is a
    final write too: the waiting child follows its policy in the same transaction, and a
    `run` child is sent at once."""
    import uuid

    from worker.policy import Decision, Sqs
    from worker.settle import settle

    parent = api.post("/jobs", json={"task": "echo"}).json()
    cancel = api.post("/jobs", json={"task": "echo", "depends_on": [parent["id"]]}).json()
    run = api.post(
        "/jobs",
        json={"task": "fan_in", "depends_on": [parent["id"]], "on_parent_failure": "run"},
    ).json()
    message = wait_for(
        lambda: next(
            (m for m in runtime.sqs.receive(10, 1) if m.job_id == uuid.UUID(parent["id"])), None
        ),
        what="the parent's message",
    )
    settle(
        runtime.sessions,
        runtime.sqs,
        message,
        lambda current: Decision(Sqs.DELETE, fail_reason="crashed its worker 3 time(s)"),
    )
    assert api.get(f"/jobs/{parent['id']}").json()["status"] == "failed"
    assert api.get(f"/jobs/{cancel['id']}").json()["status"] == "cancelled"
    assert api.get(f"/jobs/{run['id']}").json()["status"] == "queued"
    sent = wait_for(
        lambda: [m for m in runtime.sqs.receive(10, 1) if m.job_id == uuid.UUID(run["id"])],
        what="the released child's message",
    )
    assert sent
