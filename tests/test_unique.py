"""Unique jobs: one live job per unique_key under concurrent submits, across API processes."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from tests.helpers import api_process, job_statuses, start_worker_process, wait_for


def test_fifty_concurrent_unique_submits_across_two_apis_make_one_job(
    settings: Any, db: Any, procs_dir: Any
) -> None:
    """50 submits at once, split over two API processes, with two workers running: one job
    is created (201), the other 49 answers (200) name it."""
    workers = [start_worker_process(settings, procs_dir / f"w{i}.log") for i in range(2)]
    try:
        with (
            api_process(settings, procs_dir / "api1.log") as (url1, _),
            api_process(settings, procs_dir / "api2.log") as (url2, _),
        ):
            body = {"task": "sleep", "payload": {"seconds": 2}, "unique_key": "report:42"}
            barrier = threading.Barrier(50)
            answers: list[httpx.Response] = []
            lock = threading.Lock()

            def submit(url: str) -> None:
                with httpx.Client(base_url=url, timeout=30) as client:
                    barrier.wait()
                    response = client.post("/jobs", json=body)
                with lock:
                    answers.append(response)

            threads = [
                threading.Thread(target=submit, args=(url1 if i % 2 else url2,)) for i in range(50)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(r.status_code for r in answers) == [200] * 49 + [201]
            ids = {r.json()["id"] for r in answers}
            assert len(ids) == 1
            with db.cursor() as cur:
                cur.execute("SELECT count(*) FROM jobs WHERE unique_key = 'report:42'")
                assert cur.fetchone()[0] == 1
            (job_id,) = ids
            wait_for(lambda: job_statuses(db, [job_id]) == {job_id: "succeeded"}, timeout=60)
            # Finished: the key is free again ("while not finished", the default).
            again = httpx.post(url1 + "/jobs", json=body)
            assert again.status_code == 201 and again.json()["id"] != job_id
    finally:
        for w in workers:
            w.terminate()
            w.wait(30)


def test_unique_window_holds_after_the_job_finished(api: Any, db: Any) -> None:
    body = {"task": "echo", "unique_key": "w", "unique_for_seconds": 3600}
    first = api.post("/jobs", json=body)
    assert first.status_code == 201
    job_id = first.json()["id"]
    with db.cursor() as cur:  # as if it had run: finished, but inside its window
        cur.execute(
            "UPDATE jobs SET status = 'succeeded', finished_at = now() WHERE id = %s", (job_id,)
        )
    assert api.post("/jobs", json=body).json()["id"] == job_id
    with db.cursor() as cur:  # the window is over
        cur.execute(
            "UPDATE jobs SET unique_until = now() - interval '1 second' WHERE id = %s", (job_id,)
        )
    later = api.post("/jobs", json=body)
    assert later.status_code == 201 and later.json()["id"] != job_id


def test_unique_keys_in_a_batch_and_with_idempotency_keys(api: Any) -> None:
    item = {"task": "echo", "unique_key": "b"}
    result = api.post("/jobs/batch", json={"jobs": [item, item, {"task": "echo"}]}).json()
    assert [i["status"] for i in result["items"]] == ["created", "existing", "created"]
    assert result["items"][0]["job"]["id"] == result["items"][1]["job"]["id"]
    # Different idempotency keys, same unique key: still the first job.
    keyed = api.post("/jobs", json={**item, "idempotency_key": "k1"})
    assert keyed.status_code == 200 and keyed.json()["id"] == result["items"][0]["job"]["id"]


def test_unique_window_needs_a_key(api: Any) -> None:
    bad = api.post("/jobs", json={"task": "echo", "unique_for_seconds": 10})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "unique_for_seconds"


def test_retrying_a_job_whose_key_is_taken_is_a_conflict(api: Any, db: Any) -> None:
    first = api.post("/jobs", json={"task": "echo", "unique_key": "r"}).json()
    with db.cursor() as cur:
        cur.execute(
            "UPDATE jobs SET status = 'failed', finished_at = now() WHERE id = %s", (first["id"],)
        )
    assert api.post("/jobs", json={"task": "echo", "unique_key": "r"}).status_code == 201
    refused = api.post(f"/jobs/{first['id']}/retry")
    assert refused.status_code == 409 and refused.json()["error"]["field"] == "unique_key"
