"""jobq benchmark: limits, API ingest, end-to-end, enqueue->start latency, Celery peer, RSS.

One run on one machine: an embedded PostgreSQL (pgserver) and fauxqs (unless SQS_ENDPOINT_URL
is set) are started here, measured raw, then jobq and Celery run on them. Prints a table and
writes bench/results/latest.json and bench/results/latest.png.

    .venv/bin/python bench/run.py            # full run, ~7 minutes (+1.5 with --profile)
    .venv/bin/python bench/run.py --quick    # smoke run, ~2 minutes
    .venv/bin/python bench/run.py --profile  # also count round trips and py-spy the hot paths
    .venv/bin/python bench/run.py --profile cloud   # behind 20 ms SQS / 1 ms PostgreSQL RTT
    .venv/bin/python bench/run.py --latency 50,2    # behind other round trips (ms)

The phases live in bench/phases/ (one module each), what they share in harness.py (servers,
queues, jobq children), measure.py (CPU, percentiles) and plan.py (how much a run does).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netem  # noqa: E402
from ceilings_report import ceilings_of, render_ceilings  # noqa: E402
from harness import Bench  # noqa: E402
from measure import log, wait_quiet, wait_until_idle  # noqa: E402
from netem import PROFILES, Rtt  # noqa: E402
from phases import DEFAULT, NETWORK_PHASES, PHASES  # noqa: E402
from plan import Plan  # noqa: E402
from plot import plot  # noqa: E402
from report import render_table, summarize  # noqa: E402
from stack import BENCH_DIR, Stack  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"


def parser() -> argparse.ArgumentParser:
    """The command line (see bench/README.md)."""
    p = argparse.ArgumentParser(description="jobq benchmark (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="~2 minute smoke run")
    p.add_argument("--jobs", type=int, help="end-to-end job count (default 5000; quick 500)")
    p.add_argument("--only", default="", help="comma-separated phases: " + ",".join(PHASES))
    p.add_argument(
        "--profile",
        nargs="?",
        const="pyspy",
        choices=("pyspy", *PROFILES),
        help="cloud: latency proxies in front of SQS (20 ms RTT) and PostgreSQL (1 ms); "
        "loopback: none (the default); without a value (pyspy): also count DB/SQS round trips "
        "per job and py-spy the API and a worker",
    )
    p.add_argument(
        "--latency",
        metavar="SQS_MS[,PG_MS]",
        help="latency proxies adding these round trips (ms) in front of SQS and PostgreSQL",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where latest.json/png go")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with child logs")
    p.add_argument(
        "--publish",
        action="store_true",
        help="also copy the PNG, table and JSON to bench/published/ (shown in docs/)",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the machine to be < 20%% busy",
    )
    p.add_argument(
        "--e2e-configs",
        help="end-to-end worker configs as PROCSxCONCURRENCY, comma-separated (e.g. 1x8,2x32)",
    )
    return p


def plan_and_phases(args: argparse.Namespace, p: argparse.ArgumentParser) -> tuple[Plan, list[str]]:
    """The plan and the phases the flags ask for (exits with a usage error if they are bad)."""
    plan = Plan.make(args.quick, args.jobs)
    try:
        rtt = network(args)
    except ValueError as exc:
        p.error(f"--latency: {exc}")
    plan = plan.for_network(rtt.name if rtt.sqs_ms or rtt.pg_ms else "loopback")
    if args.e2e_configs:
        try:
            plan = plan.with_e2e_configs(args.e2e_configs)
        except ValueError as exc:
            p.error(f"--e2e-configs: {exc}")
    phases = [*DEFAULT, "profile"] if args.profile == "pyspy" else list(DEFAULT)
    if plan.network != "loopback":
        phases = [name for name in phases if name in NETWORK_PHASES]
    if args.only:
        phases = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in phases if name not in PHASES]
    if unknown:
        p.error(f"--only: unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASES)}")
    return plan, phases


def network(args: argparse.Namespace) -> Rtt:
    """The round trips --profile / --latency ask for (0, 0 on loopback)."""
    if args.latency:
        return Rtt.parse(args.latency)
    sqs_ms, pg_ms = PROFILES.get(args.profile or "loopback", (0.0, 0.0))
    return Rtt(sqs_ms, pg_ms)


def run_phase(bench: Bench, phase: str, errors: dict[str, str]) -> None:
    """One phase; its result (or its traceback in `errors`) and how busy the machine was."""
    stack = bench.stack
    quiet = wait_quiet(stack, bench.wait_idle) if bench.wait_idle else None
    log(f"--- {phase}")
    t0 = time.time()
    try:
        bench.results[phase] = PHASES[phase](bench)
    except KeyboardInterrupt:
        raise
    except Exception:  # noqa: BLE001 - record it and go on with the other phases
        errors[phase] = traceback.format_exc()
        log(f"phase {phase} failed:\n{errors[phase]}")
    finally:
        stack.foreign.sample(stack.workdir)
        other = stack.foreign.percent_between(t0, time.time())
        bench.results.setdefault("phases", {})[phase] = {
            "seconds": round(time.time() - t0, 1),
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "other_processes_cpu_percent": other,
            "other_processes_cpu_percent_before": quiet,
        }
        if other is not None and other > 15:
            log(f"warning: other processes used {other:.0f}% CPU during {phase}")


def run_all(
    bench: Bench, phases: list[str], busy_before: float, errors: dict[str, str], rtt: Rtt
) -> None:
    """Set up the servers and run every phase (tracebacks of failed phases into `errors`)."""
    bench.setup()
    if rtt.sqs_ms or rtt.pg_ms:
        bench.results["network"] = netem.install(bench, rtt)
    env = bench.results["environment"]
    env["machine_busy_before_percent"] = round(busy_before, 1)
    env["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    bench.results.setdefault("phases", {})
    bench.stack.start_sampling()
    for phase in phases:
        run_phase(bench, phase, errors)
    bench.results["ceilings"] = ceilings_of(bench.results, rtt)


def close(stack: Stack) -> None:
    """Stop everything; a second Ctrl-C must not skip the cleanup."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stack.close()
    finally:
        signal.signal(signal.SIGINT, previous)


def write_outputs(results: dict[str, Any], out: Path, publish: bool) -> str:
    """latest.json, latest.png and latest.txt in `out` (and bench/published/); the table."""
    results["summary"] = summarize(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    try:
        plot(results, out / "latest.png")
    except Exception:  # noqa: BLE001
        log("plot failed:\n" + traceback.format_exc())
    table = render_table(results) + "\n\n" + render_ceilings(results)
    (out / "latest.txt").write_text(table + "\n")
    if publish:
        published = BENCH_DIR / "published"
        published.mkdir(exist_ok=True)
        # A latency-profile run sits beside the loopback one instead of replacing it.
        stem = "benchmarks-cloud" if results.get("network") else "benchmarks"
        for name in ("latest.json", "latest.txt", "latest.png"):
            if (out / name).exists():
                shutil.copyfile(out / name, published / name.replace("latest", stem))
        log(f"published to {published}")
    return table


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 if every phase succeeded, 1 if one failed, 130 if interrupted."""
    p = parser()
    args = p.parse_args(argv)
    plan, phases = plan_and_phases(args, p)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    stack = Stack(keep_logs=args.keep_logs)
    bench = Bench(plan, stack, out_dir=args.out, wait_idle=args.wait_idle)
    errors: dict[str, str] = {}
    interrupted = False
    started = time.monotonic()
    busy_before = wait_until_idle(args.wait_idle)
    if busy_before > 20:
        log(
            f"warning: the machine is {busy_before:.0f}% busy before the run (other processes); "
            "the numbers will be low"
        )
    try:
        run_all(bench, phases, busy_before, errors, network(args))
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping everything")
    finally:
        close(stack)

    results = bench.results
    results["duration_s"] = time.monotonic() - started
    if errors:
        results["errors"] = errors
    if interrupted:
        results["interrupted"] = True
    table = write_outputs(results, args.out, args.publish)
    print()
    print(table)
    print()
    log(
        f"wrote {args.out / 'latest.json'}, {args.out / 'latest.png'} "
        f"in {results['duration_s'] / 60:.1f} min"
    )
    return 130 if interrupted else (1 if errors else 0)


if __name__ == "__main__":
    sys.exit(main())
