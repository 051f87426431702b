"""The executor runs handlers on reused threads and still enforces every timeout."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from app.observability.trace import trace_id_var
from app.tasks.registry import JobContext, Registry
from tests.helpers import wait_for
from worker.executor import Executor, Limits


def _ctx(task: str) -> JobContext:
    return JobContext(uuid.uuid4(), task, 1, 3)


def _registry() -> tuple[Registry, dict[str, Any]]:
    registry = Registry()
    seen: dict[str, Any] = {"threads": set(), "release": threading.Event(), "trace": []}

    @registry.register("where")
    def where(payload: dict[str, Any], ctx: JobContext) -> int:
        seen["threads"].add(threading.current_thread())  # objects: idents get reused
        seen["trace"].append(trace_id_var.get())
        return int(payload.get("n", 0))

    @registry.register("stuck", timeout_seconds=0.2)
    def stuck(payload: dict[str, Any], ctx: JobContext) -> str:
        seen["stuck_thread"] = threading.current_thread()
        seen["release"].wait(30)  # ignores ctx.cancelled on purpose
        return "late"

    @registry.register("boom")
    def boom(payload: dict[str, Any], ctx: JobContext) -> None:
        raise ValueError("bad input")

    return registry, seen


def test_handlers_reuse_threads_instead_of_starting_one_per_job() -> None:
    registry, seen = _registry()
    executor = Executor(registry, Limits(5.0), max_idle=4)
    threads_before = threading.active_count()
    trace_id_var.set("trace-1")
    outcomes = [executor.run(_ctx("where"), {"n": i}, None) for i in range(50)]
    assert [o.result for o in outcomes] == [str(n) for n in range(50)]  # JSON text
    assert len(seen["threads"]) <= 2, seen["threads"]  # one runner, reused (two at most: races)
    assert threading.active_count() - threads_before <= 2
    assert seen["trace"] == ["trace-1"] * 50  # each call ran in a copy of the caller's context
    failed = executor.run(_ctx("boom"), {}, None)
    assert failed.failure is not None and "bad input" in failed.failure.message


def test_a_handler_past_its_timeout_keeps_its_runner_and_others_get_a_new_one() -> None:
    registry, seen = _registry()
    executor = Executor(registry, Limits(5.0), max_idle=4)
    ctx = _ctx("stuck")
    timed_out = executor.run(ctx, {}, None)
    assert timed_out.failure is not None and timed_out.failure.retryable
    assert "timed out after 0.2 s" in timed_out.failure.message
    assert ctx.cancelled.is_set()
    # The stuck handler still occupies its runner: the next job runs elsewhere.
    assert executor.run(_ctx("where"), {"n": 7}, None).result == "7"
    assert seen["stuck_thread"] not in seen["threads"]
    seen["release"].set()
    # Once the stuck handler returns, its runner is idle again and gets reused.
    wait_for(lambda: len(executor._runners._idle) == 2, timeout=10, what="both runners idle")
    for i in range(10):
        executor.run(_ctx("where"), {"n": i}, None)
    assert len(seen["threads"]) <= 2


def test_surplus_idle_runners_end() -> None:
    registry, _ = _registry()
    executor = Executor(registry, Limits(5.0), max_idle=1)
    barrier = threading.Barrier(3)
    runners: list[threading.Thread] = []

    @registry.register("meet")
    def meet(payload: dict[str, Any], ctx: JobContext) -> None:
        runners.append(threading.current_thread())
        barrier.wait(10)  # three handlers at once: three runners

    callers = [
        threading.Thread(target=executor.run, args=(_ctx("meet"), {}, None)) for _ in range(3)
    ]
    for t in callers:
        t.start()
    for t in callers:
        t.join(10)
    assert len(set(runners)) == 3
    wait_for(
        lambda: sum(t.is_alive() for t in runners) == 1,
        timeout=10,
        what="two of three runners to end (one idle kept)",
    )
