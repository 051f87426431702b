"""Isolated runs: one job's handler in a child process of its own.

A job whose previous run was lost (its worker died while running it) runs next in isolation,
so that if it is the one that kills its process, only its child dies: the worker survives,
records the run as `crashed` and fails the job (dead-lettered), while the jobs that merely
shared the dead worker run on normally. The child is killed on timeout and on any
cancellation, so an isolated run always ends when jobq says it does.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import threading
import uuid
from multiprocessing.connection import Connection
from typing import Any

from app.tasks.registry import JobContext
from worker.retry import crashed, timed_out

log = logging.getLogger("jobq.isolated")

JOIN_SECONDS = 5.0
PR_SET_PDEATHSIG = 1
# "spawn": a fresh interpreter, not a fork of a process full of threads and open sockets.
_MP = multiprocessing.get_context("spawn")


def run(
    task: str, modules: list[str], payload: dict[str, Any], ctx: JobContext, limit: float
) -> tuple[str, Any]:
    """Run the handler in a child; ("json", result text) or ("failure", Failure)."""
    receiver, sender = _MP.Pipe(duplex=False)
    args = (sender, task, modules, payload, str(ctx.job_id), ctx.attempt, ctx.max_attempts)
    child = _MP.Process(
        target=_child_main,
        args=(*args, ctx.failures, ctx.parents),
        name=f"jobq-isolated-{ctx.job_id}",
        daemon=True,
    )
    child.start()
    sender.close()  # ours: the child holds the only writing end, so its death reads as EOF
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        child.kill()

    ctx.cancelled.on_cancel(kill)
    try:
        if not receiver.poll(limit):
            ctx.cancelled.cancel("timeout")  # kills the child
            return "failure", timed_out(limit)
        try:
            message: tuple[str, Any] = receiver.recv()
        except EOFError:
            message = ("failure", None)
    finally:
        child.join(JOIN_SECONDS)
        receiver.close()
    if message[1] is None and message[0] == "failure":
        if killed.is_set():
            return "failure", crashed(f"killed by jobq ({ctx.cancelled.reason})")
        log.error(
            "isolated run of the job died: it is the job that crashes its worker",
            extra={"job_id": str(ctx.job_id), "task": task, "exit_code": child.exitcode},
        )
        return "failure", crashed(f"its process exited with code {child.exitcode}")
    return message


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when its worker dies: an orphaned run would otherwise go
    on while another worker, having claimed the job after the lease, runs it again."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _child_main(
    conn: Connection,
    task: str,
    modules: list[str],
    payload: dict[str, Any],
    job_id: str,
    attempt: int,
    max_attempts: int,
    failures: int,
    parents: list[dict[str, Any]] | None = None,
) -> None:
    """In the child: load the tasks, run the handler, send back the encoded outcome."""
    _die_with_parent()
    from app.config import get_settings
    from app.observability.logs import configure_logging
    from app.tasks.registry import REGISTRY
    from worker.executor import Executor, Limits

    settings = get_settings()
    configure_logging(settings)
    REGISTRY.load_modules(modules)
    executor = Executor(
        REGISTRY,
        Limits(
            settings.task_timeout_seconds, settings.max_result_bytes, settings.max_traceback_bytes
        ),
        max_idle=1,
    )
    ctx = JobContext(
        uuid.UUID(job_id), task, attempt, max_attempts, failures, parents=parents or []
    )
    # The parent enforces the real limit by killing this process; this one only bounds it.
    outcome = executor.run(ctx, payload, 10 * settings.task_timeout_seconds)
    if outcome.failure is not None:
        conn.send(("failure", outcome.failure))
    else:
        conn.send(("json", outcome.result))
    conn.close()
