"""Measurement helpers: the log line, percentiles, CPU traces and windows, waits for quiet."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from stack import Stack

MB = 1024 * 1024


def log(msg: str) -> None:
    """One timestamped progress line on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def _busy_idle(t: Any) -> tuple[float, float]:
    """(total, idle) CPU seconds of the machine; iowait counts as idle."""
    return sum(t), t.idle + getattr(t, "iowait", 0)


def _proc_cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


class CpuTrace:
    """Samples the CPU time of some processes (and their children) and of the machine every
    0.1 s, so the CPU spent between two instants (e.g. first and last job done) can be read."""

    def __init__(self, pids: list[int], children: bool = False) -> None:
        self.procs: list[psutil.Process] = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self.procs.append(psutil.Process(pid))
        self.children = children
        self.samples: list[tuple[float, float, float, float]] = []  # wall, proc cpu, busy, total
        self._stop = threading.Event()
        self._cpu_seen: dict[int, float] = {}
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="cpu-trace", daemon=True)
        self._thread.start()

    def _traced_cpu(self) -> float:
        for p in self.procs:
            members = [p]
            if self.children:
                with contextlib.suppress(psutil.Error):
                    members += p.children(recursive=True)
            for m in members:
                with contextlib.suppress(psutil.Error):
                    t = m.cpu_times()
                    self._cpu_seen[m.pid] = t.user + t.system  # keeps the last value of the dead
        return sum(self._cpu_seen.values())

    def _sample(self) -> None:
        total, idle = _busy_idle(psutil.cpu_times())
        self.samples.append((time.time(), self._traced_cpu(), total - idle, total))

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def stop(self) -> None:
        """Stop sampling (after one last sample)."""
        self._stop.set()
        self._thread.join()
        self._sample()

    def between(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds of the processes, and machine busy %, between wall-clock t0 and t1."""
        if not self.samples or t1 <= t0:
            return {"cpu_seconds": 0.0, "machine_busy_percent": 0.0}
        a = min(self.samples, key=lambda s: abs(s[0] - t0))
        b = min(self.samples, key=lambda s: abs(s[0] - t1))
        total = b[3] - a[3]
        return {
            "cpu_seconds": b[1] - a[1],
            "process_cpu_percent": 100 * (b[1] - a[1]) / max(1e-9, b[0] - a[0]),
            "machine_busy_percent": 100 * (b[2] - a[2]) / total if total > 0 else 0.0,
        }


class CpuWindow:
    """CPU used by some processes, and how busy the whole machine was, between start and stop."""

    def __init__(self, pids: list[int]) -> None:
        self.procs: list[psutil.Process] = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                # With `jobq api --workers N` the serving processes are the supervisor's children.
                self.procs += [proc, *proc.children(recursive=True)]
        self.c0 = [_proc_cpu(p) for p in self.procs]
        self.m0 = psutil.cpu_times()
        self.t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        """CPU seconds and % of one core of the processes, and machine busy %, since start."""
        wall = max(1e-9, time.monotonic() - self.t0)
        used = sum(max(0.0, _proc_cpu(p) - c) for p, c in zip(self.procs, self.c0, strict=True))
        total1, idle1 = _busy_idle(psutil.cpu_times())
        total0, idle0 = _busy_idle(self.m0)
        total, idle = total1 - total0, idle1 - idle0
        return {
            "cpu_seconds": used,
            "process_cpu_percent": 100 * used / wall,
            "machine_busy_percent": 100 * (1 - idle / total) if total > 0 else 0.0,
        }


def machine_busy(seconds: float) -> float:
    """Percent of all CPUs busy over the next `seconds`."""
    total0, idle0 = _busy_idle(psutil.cpu_times())
    time.sleep(seconds)
    total1, idle1 = _busy_idle(psutil.cpu_times())
    total, idle = total1 - total0, idle1 - idle0
    return 100 * (1 - idle / total) if total > 0 else 0.0


def wait_until_idle(max_wait: float, threshold: float = 20.0) -> float:
    """Wait (up to max_wait s) for the machine to be quiet; return the last busy percentage."""
    deadline = time.monotonic() + max_wait
    busy = machine_busy(2.0)
    while busy > threshold and time.monotonic() < deadline:
        log(f"machine {busy:.0f}% busy before the run; waiting for it to quiet down")
        time.sleep(5)
        busy = machine_busy(2.0)
    return busy


def wait_quiet(stack: Stack, max_wait: float, threshold: float = 10.0) -> float | None:
    """Between phases: wait (up to max_wait s) until processes that are not ours use less than
    `threshold`% CPU over 3 s; return the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        t0 = time.time()
        stack.foreign.sample(stack.workdir)
        time.sleep(3.0)
        stack.foreign.sample(stack.workdir)
        other = stack.foreign.percent_between(t0, time.time())
        if other is None or other < threshold or time.monotonic() > deadline:
            return other
        log(f"other processes use {other:.0f}% CPU; waiting for quiet (--wait-idle)")
