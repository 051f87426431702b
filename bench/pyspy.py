"""`profile` with py-spy: where the API's and a worker's CPU goes, and per-thread CPU.

`py-spy record --nonblocking` on the API under 1 and 32 clients, and on a draining worker;
collapsed stacks go next to latest.json as profile-*.txt and a summary into latest.json.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
from harness import Bench, last_json_line
from stack import BENCH_DIR


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(BENCH_DIR.parent))
    except ValueError:
        return str(path)


def py_spy() -> str | None:
    """The py-spy executable (next to this Python, or on PATH), or None."""
    exe = Path(sys.executable).with_name("py-spy")
    return str(exe) if exe.exists() else shutil.which("py-spy")


def record(
    pid: int, seconds: float, out: Path, *, idle: bool = False, gil: bool = False
) -> subprocess.Popen[bytes]:
    """py-spy record: `gil` samples only the thread holding the GIL (where Python CPU goes);
    `idle` also samples waiting threads (where wall time goes)."""
    argv = [
        py_spy() or "py-spy",
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "200",
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
    ]
    if idle:
        argv.append("--idle")
    if gil:
        argv.append("--gil")
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )


_THREAD = re.compile(r'^Thread (\d+|0x[0-9a-fA-F]+) \([^)]*\): "([^"]*)"', re.M)


def thread_names(pid: int, tries: int = 3) -> dict[int, str]:
    """Native thread id -> Python thread name (from `py-spy dump`; retried, it can fail under
    load)."""
    names: dict[int, str] = {}
    for _ in range(tries):
        try:
            out = subprocess.run(
                [py_spy() or "py-spy", "dump", "--pid", str(pid), "--nonblocking"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        names.update({int(tid, 0): name for tid, name in _THREAD.findall(out)})
        if names:
            break
        time.sleep(0.2)
    return names


def thread_group(name: str) -> str:
    """A thread's name without its per-instance suffix (uuid, counter)."""
    return re.sub(r"([-_ ]?[0-9a-f]{8}-[0-9a-f-]{27,}|_\d+)$", "", name) or name


def thread_cpu(pid: int, seconds: float) -> dict[str, Any]:
    """CPU used by each (named) thread of `pid` over `seconds`, as % of one core."""
    names = thread_names(pid)
    proc = psutil.Process(pid)
    before = {t.id: t.user_time + t.system_time for t in proc.threads()}
    cpu0 = sum(proc.cpu_times()[:2])
    t0 = time.monotonic()
    time.sleep(seconds)
    after = {t.id: t.user_time + t.system_time for t in proc.threads()}
    cpu1 = sum(proc.cpu_times()[:2])
    wall = time.monotonic() - t0
    groups: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for tid, total in after.items():
        group = thread_group(names.get(tid, "(started after the snapshot)"))
        groups[group] += total - before.get(tid, 0.0)
        counts[group] += 1
    accounted = sum(groups.values())
    groups["(threads that ended meanwhile)"] = max(0.0, (cpu1 - cpu0) - accounted)
    return {
        "process_cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1),
        "threads": [
            {"thread": g, "count": counts.get(g, 0), "cpu_percent": round(100 * v / wall, 1)}
            for g, v in groups.most_common()
            if v > 0.005 * wall
        ],
    }


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

PACKAGES = (
    ("psycopg2", "psycopg2 (DB driver, incl. waiting on PostgreSQL)"),
    ("sqlalchemy", "SQLAlchemy"),
    ("botocore", "botocore/boto3 (SQS client)"),
    ("boto3", "botocore/boto3 (SQS client)"),
    ("urllib3", "urllib3 (HTTP to SQS)"),
    ("pydantic", "pydantic"),
    ("fastapi", "FastAPI"),
    ("starlette", "Starlette"),
    ("uvicorn", "uvicorn/h11"),
    ("h11", "uvicorn/h11"),
    ("anyio", "anyio (threadpool hand-off)"),
    ("asyncio", "asyncio"),
    ("logging", "logging"),
    ("json", "json"),
    ("threading.py", "threading (locks, waits)"),
    ("queue.py", "threading (locks, waits)"),
    ("concurrent/futures", "threading (locks, waits)"),
    ("socket.py", "socket"),
    ("ssl.py", "socket"),
    ("http/client", "http.client"),
    ("email/", "http.client"),
    ("app/", "jobq app/"),
    ("worker/", "jobq worker/"),
    ("uuid", "uuid"),
)


def package_of(file: str) -> str:
    """Which package (PACKAGES) a source file of a stack frame belongs to."""
    for needle, name in PACKAGES:
        if needle in file:
            return name
    return "other: " + file.rsplit("/", 1)[-1]


def summarize_stacks(path: Path, top: int = 25) -> dict[str, Any]:
    """Self time by package, and inclusive time of the heaviest functions."""
    total = 0
    self_by_pkg: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_thread_root: Counter[str] = Counter()
    if not path.exists():
        return {"error": f"{path.name} was not written (py-spy failed?)"}
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        parsed = []
        for f in frames:
            m = _FRAME.match(f.strip())
            parsed.append((m.group("func"), m.group("file")) if m else (f, ""))
        func, file = parsed[-1]
        self_by_pkg[package_of(file)] += count
        seen = set()
        for func, file in parsed:
            key = f"{func} ({file})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += count
        # What the thread is: the first frame in our code or a known loop.
        root = next(
            (
                f"{fn} ({fl})"
                for fn, fl in parsed
                if fl.startswith(("app/", "worker/")) or "/app/" in fl or "/worker/" in fl
            ),
            None,
        )
        by_thread_root[root or f"{parsed[min(2, len(parsed) - 1)][0]}"] += count

    def share(c: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in c.most_common(n)] if total else []

    return {
        "samples": total,
        "self_percent_by_package": share(self_by_pkg, 20),
        "inclusive_percent_top": share(inclusive, top),
        "entry_points_percent": share(by_thread_root, 12),
    }


def spy_api(bench: Bench, seconds: float) -> dict[str, Any]:
    """Thread CPU and `py-spy --gil` of the API under 1 and then 32 clients."""
    queue = bench.new_queue("spy-api")
    bench.reset_jobs()
    api, url = bench.start_api(queue, name="api-spy")
    out: dict[str, Any] = {}
    try:
        bench.loadgen(url, "loadgen-spy-warm", "--concurrency", "4", "--requests", "200")
        for clients in (1, 32):
            argv = bench.loadgen_argv(
                url, "--concurrency", str(clients), "--duration", str(seconds + 5), "--warmup", "1"
            )
            gen = bench.stack.spawn(
                f"loadgen-spy{clients}", "loadgen", argv, env=bench.client_env(), capture=True
            )
            time.sleep(2.0)
            threads = thread_cpu(api.pid, 3.0)
            path = bench.out_dir / f"profile-api-{clients}clients.txt"
            spy = record(api.pid, seconds, path, gil=True)
            spy.wait(seconds + 30)
            gen_out, _ = gen.popen.communicate(timeout=seconds + 60)
            bench.stack.stop(gen)
            out[f"{clients}_clients"] = {
                "load": last_json_line(gen_out),
                "thread_cpu": threads,
                "gil_samples": summarize_stacks(path),
                "stacks_file": _rel(path),
            }
    finally:
        bench.stack.stop(api)
    return out


def spy_worker(bench: Bench, seconds: float) -> dict[str, Any]:
    """Thread CPU, `py-spy --gil` and a wall-clock (idle threads too) profile of a worker."""
    queue = bench.new_queue("spy-worker")
    bench.reset_jobs()
    n = 6000
    bench.preload_jobs(queue, n)
    workers = bench.start_workers(queue, 1, 8)
    out: dict[str, Any] = {}
    try:
        time.sleep(2.5)  # imports done, draining
        out["thread_cpu"] = thread_cpu(workers[0].pid, 3.0)
        path = bench.out_dir / "profile-worker-1x8.txt"
        spy = record(workers[0].pid, seconds, path, gil=True)
        spy.wait(seconds + 30)
        path_idle = bench.out_dir / "profile-worker-1x8-wall.txt"
        spy = record(workers[0].pid, min(3, seconds), path_idle, idle=True)
        spy.wait(seconds + 30)
        out["gil_samples"] = summarize_stacks(path)
        out["wall_incl_idle_threads"] = summarize_stacks(path_idle)
        out["stacks_files"] = [_rel(p) for p in (path, path_idle)]
    finally:
        for w in workers:
            bench.stack.stop(w, grace=3)
    return out
