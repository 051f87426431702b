"""The benchmark's moving parts: embedded PostgreSQL, fauxqs, child processes, RSS sampling.

Every server binds 127.0.0.1 (PostgreSQL only a Unix socket) and everything started here is
stopped by `Stack.close()`, which run.py calls in a `finally` (also on Ctrl-C and SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
NODE = BENCH_DIR / "node_modules" / ".bin" / "node"
FAUXQS_LAUNCHER = BENCH_DIR / "fauxqs_local.mjs"


_next_port = [0]


def free_port() -> int:
    """A TCP port nobody listens on right now (on 127.0.0.1).

    `BENCH_PORTS=LOW-HIGH` takes them from that range (a machine shared by several runs).
    """
    span = os.environ.get("BENCH_PORTS")
    if not span:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    low, high = (int(x) for x in span.split("-"))
    for _ in range(high - low + 1):
        port = low + _next_port[0] % (high - low + 1)
        _next_port[0] += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in BENCH_PORTS={span}")


def jobq_command(*args: str) -> list[str]:
    """The `jobq` console script of the running venv (python -m app.cli as a fallback)."""
    script = Path(sys.executable).with_name("jobq")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "app.cli", *args]


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until `url` answers 200 (or raise, also when `proc` died meanwhile)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # noqa: BLE001 - keep polling
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s: {last}")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the benchmark process dies (even SIGKILLed)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def read_vm_hwm(pid: int) -> int:
    """The kernel's peak-RSS high-water mark of `pid` in bytes (0 if unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Proc:
    """A child process started by the benchmark, with its peak RSS."""

    name: str
    role: str  # "api", "worker", "celery", "fauxqs", "loadgen", ...
    popen: subprocess.Popen[bytes]
    include_children: bool = False  # Celery's prefork pool: count the pool processes too
    peak_rss: int = 0
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def sample(self) -> None:
        """Update the peak RSS from psutil (and the kernel's VmHWM)."""
        try:
            p = psutil.Process(self.pid)
            rss = p.memory_info().rss
            if self.include_children:
                for child in p.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        rss += child.memory_info().rss
            else:
                rss = max(rss, read_vm_hwm(self.pid))
            self.peak_rss = max(self.peak_rss, rss)
        except psutil.Error:
            pass

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM (to its process group), wait `grace`, then SIGKILL. Returns the exit code."""
        if self.popen.poll() is None:
            self.sample()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        # Children of a process group leader that outlived it (Celery pool processes).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return self.popen.returncode


class ForeignLoad:
    """CPU used by processes outside this benchmark (another test suite, a build...).

    Ours: this process, its descendants, and the PostgreSQL processes whose command line names
    our temp dir. Everything else is foreign; a busy neighbour makes every number here low.
    """

    def __init__(self) -> None:
        self._last: dict[int, float] = {}
        self.samples: list[tuple[float, float]] = []  # (wall time, foreign cpu seconds so far)
        self._total = 0.0
        self._me = os.getpid()

    def sample(self, workdir: Path) -> None:
        try:
            mine = {self._me} | {c.pid for c in psutil.Process(self._me).children(recursive=True)}
        except psutil.Error:
            mine = {self._me}
        marker = str(workdir)
        cpu: dict[int, float] = {}
        for p in psutil.process_iter(["cmdline", "cpu_times"]):
            try:
                t = p.info["cpu_times"]
                if t is None or p.pid in mine:
                    continue
                if marker in " ".join(p.info["cmdline"] or []):  # our postmaster + its backends
                    mine.add(p.pid)
                    mine.update(c.pid for c in p.children(recursive=True))
                    continue
                cpu[p.pid] = t.user + t.system
            except psutil.Error:
                continue
        seen = {pid: v for pid, v in cpu.items() if pid not in mine}
        if self._last:
            self._total += sum(max(0.0, v - self._last.get(pid, v)) for pid, v in seen.items())
        self._last = seen
        self.samples.append((time.time(), self._total))

    def percent_between(self, t0: float, t1: float) -> float | None:
        """Average foreign CPU, in % of one core, between wall-clock t0 and t1."""
        inside = [s for s in self.samples if t0 - 1 <= s[0] <= t1 + 1]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return 100 * (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


@dataclass
class Stack:
    """Owns every server and child process of one benchmark run."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="jobq-bench-")))
    procs: list[Proc] = field(default_factory=list)
    pg_handle: Any = None
    database_url: str = ""
    sqs_endpoint: str = ""
    fauxqs: Proc | None = None
    keep_logs: bool = False
    _sampler: threading.Thread | None = None
    _stop_sampling: threading.Event = field(default_factory=threading.Event)
    peaks: dict[str, int] = field(default_factory=dict)  # role/name -> bytes
    foreign: ForeignLoad = field(default_factory=lambda: ForeignLoad())

    # -- servers -------------------------------------------------------------------------

    def start_postgres(self) -> str:
        from app.cli.dev import start_postgres

        self.database_url, self.pg_handle = start_postgres(self.workdir / "pg")
        return self.database_url

    @property
    def pg_log(self) -> Path | None:
        return Path(self.pg_handle.log) if self.pg_handle is not None else None

    def start_fauxqs(self) -> str:
        if not NODE.exists():
            raise RuntimeError(
                f"{NODE} is missing: run `npm install --prefix bench` (fauxqs + Node 22)"
            )
        port = free_port()
        env = dict(os.environ, FAUXQS_PORT=str(port), FAUXQS_LOGGER="false")
        self.fauxqs = self.spawn(
            "fauxqs", "fauxqs", [str(NODE), str(FAUXQS_LAUNCHER)], env=env, cwd=BENCH_DIR
        )
        self.sqs_endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.fauxqs.popen.poll() is not None:
                raise RuntimeError(f"fauxqs exited early; see {self.fauxqs.log_path}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                return self.sqs_endpoint
            time.sleep(0.1)
        raise RuntimeError("fauxqs did not start within 20 s")

    # -- child processes -----------------------------------------------------------------

    def spawn(
        self,
        name: str,
        role: str,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: Path = REPO_DIR,
        include_children: bool = False,
        capture: bool = False,
    ) -> Proc:
        """Start a child in its own session (Ctrl-C reaches only us; we stop it in order)."""
        log_path = self.workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = subprocess.PIPE if capture else log_path.open("ab")
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=log_path.open("ab") if capture else subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        proc = Proc(name, role, popen, include_children=include_children, log_path=log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 10.0) -> int | None:
        code = proc.stop(grace)
        self._record_peak(proc)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)
        return code

    def _record_peak(self, proc: Proc) -> None:
        self.peaks[proc.name] = max(self.peaks.get(proc.name, 0), proc.peak_rss)
        key = f"role:{proc.role}"
        self.peaks[key] = max(self.peaks.get(key, 0), proc.peak_rss)

    def peak(self, role: str) -> int:
        live = [p.peak_rss for p in self.procs if p.role == role]
        return max([self.peaks.get(f"role:{role}", 0), *live])

    # -- RSS sampling, and CPU used by processes that are not ours ----------------------

    def start_sampling(self, interval: float = 0.25) -> None:
        def loop() -> None:
            ticks = 0
            while not self._stop_sampling.wait(interval):
                for proc in list(self.procs):
                    proc.sample()
                ticks += 1
                if ticks % 4 == 0:
                    self.foreign.sample(self.workdir)

        self.foreign.sample(self.workdir)

        self._sampler = threading.Thread(target=loop, name="rss-sampler", daemon=True)
        self._sampler.start()

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every child (newest first), fauxqs, PostgreSQL; remove the temp dir."""
        self._stop_sampling.set()
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc, grace=5.0)
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                print(f"bench: stopping {proc.name} failed: {exc}", file=sys.stderr)
        if self.pg_handle is not None:
            try:
                self.pg_handle.cleanup()
            except Exception as exc:  # noqa: BLE001
                print(f"bench: stopping PostgreSQL failed: {exc}", file=sys.stderr)
            self.pg_handle = None
        if not self.keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            print(f"bench: logs kept in {self.workdir / 'logs'}", file=sys.stderr)
