"""Issue 19's table: burn-down and steady-state figures next to their RTT ceilings and targets."""

from __future__ import annotations

from typing import Any

from ceilings import round_trips_per_write, api_ceiling, ratio, worker_ceiling
from netem import Rtt


def _fmt(v: float | None, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def ceilings_of(results: dict[str, Any], rtt: Rtt) -> dict[str, Any]:
    """Each end-to-end figure with the ceiling its call pattern allows, the ratio and targets."""
    rows: list[dict[str, Any]] = []
    raw = results.get("limits", {}).get("sqs_receive_delete_batch_msgs_per_s")
    for phase in ("e2e", "steady"):
        for run in results.get(phase, {}).get("runs", []):
            w, c = run["workers"], run["concurrency"]
            ceil = worker_ceiling(c, rtt.sqs_ms, rtt.pg_ms, w) if rtt.sqs_ms else None
            rows.append(
                {
                    "method": "burn-down" if phase == "e2e" else "steady",
                    "workers": w,
                    "concurrency": c,
                    "jobs_per_s": run["jobs_per_s"],
                    "ceiling": ceil,
                    "ratio_to_ceiling": ratio(run["jobs_per_s"], ceil and ceil["jobs_per_s"]),
                    "ratio_to_raw_recv_delete": ratio(run["jobs_per_s"], raw),
                    "worker_cpu_ms_per_job": run.get("worker_cpu_ms_per_job"),
                    "machine_busy_percent": run.get("machine_busy_percent"),
                    "other_processes_cpu_percent": run.get("other_processes_cpu_percent"),
                }
            )
    celery = max((r["jobs_per_s"] for r in results.get("celery", {}).get("runs", [])), default=None)
    out: dict[str, Any] = {"network": rtt.name, "e2e": rows, "celery_best_jobs_per_s": celery}
    targets: list[dict[str, Any]] = []
    c64 = [r for r in rows if r["workers"] == 1 and r["concurrency"] == 64]
    if rtt.sqs_ms:
        for r in c64:
            targets.append(
                {
                    "target": f"1 x 64 {r['method']} >= 50% of the RTT ceiling",
                    "value": r["ratio_to_ceiling"],
                    "ok": r["ratio_to_ceiling"] is not None and r["ratio_to_ceiling"] >= 0.5,
                }
            )
        lat = results.get("latency", {}).get("enqueue_to_start_p50_ms")
        goal = 2 * rtt.sqs_ms + 10
        if lat is not None:
            targets.append(
                {"target": f"enqueue->start p50 <= {goal:g} ms", "value": lat, "ok": lat <= goal}
            )
    else:
        for r in rows:
            need = 0.8 if r["method"] == "burn-down" else 0.5
            targets.append(
                {
                    "target": f"{r['workers']} x {r['concurrency']} {r['method']} "
                    f">= {need}x raw receive+delete",
                    "value": r["ratio_to_raw_recv_delete"],
                    "ok": r["ratio_to_raw_recv_delete"] is not None
                    and r["ratio_to_raw_recv_delete"] >= need,
                }
            )
    best = max((r["jobs_per_s"] for r in rows), default=None)
    if celery and best:
        targets.append(
            {
                "target": "best jobq / best Celery >= 5",
                "value": best / celery,
                "ok": best >= 5 * celery,
            }
        )
    at32 = next(
        (lv for lv in results.get("ingest", {}).get("levels", []) if lv["concurrency"] == 32), None
    )
    if at32:
        out["post_jobs_32"] = {
            "req_per_s": at32["req_per_s"],
            "p99_ms": at32["p99_ms"],
            "rtt_ceiling_req_per_s": api_ceiling(32, rtt.pg_ms, 0.0),
        }
        if not rtt.sqs_ms:
            targets.append(
                {
                    "target": "POST /jobs p99 < 50 ms at 32 clients",
                    "value": at32["p99_ms"],
                    "ok": at32["p99_ms"] < 50,
                }
            )
    out["targets"] = targets
    return out


def render_ceilings(results: dict[str, Any]) -> str:
    """The issue-19 section of latest.txt."""
    c = results.get("ceilings") or {}
    net = results.get("network") or {}
    lines = [f"Network: {c.get('network', 'loopback')}"]
    if net:
        lines.append(
            f"  measured one-caller call time: SQS {net['sqs_call_p50_ms']:.1f} ms "
            f"(direct {net['sqs_call_direct_p50_ms']:.1f}), PostgreSQL SELECT 1 "
            f"{net['pg_select_p50_ms']:.2f} ms (direct {net['pg_select_direct_p50_ms']:.2f})"
        )
    lines.append(
        "  method    procs conc.  jobs/s  ceiling  bound     pollers deletes  ÷ ceiling  ÷ raw r+d"
        "  CPU ms/job  machine  others"
    )
    for r in c.get("e2e", []):
        ceil = r["ceiling"] or {}
        lines.append(
            f"  {r['method']:<9} {r['workers']:>5} {r['concurrency']:>5} {_fmt(r['jobs_per_s']):>7}"
            f"  {_fmt(ceil.get('jobs_per_s')):>7}  {ceil.get('bound_by', '-'):<9}"
            f" {ceil.get('pollers', '-'):>7} {ceil.get('deletes_in_flight', '-'):>7}"
            f"  {_fmt(r['ratio_to_ceiling'], '.2f'):>9}"
            f"  {_fmt(r['ratio_to_raw_recv_delete'], '.2f'):>9}"
            f"  {_fmt(r['worker_cpu_ms_per_job'], '.2f'):>10}"
            f"  {_fmt(r['machine_busy_percent']):>6}%"
            f"  {_fmt(r['other_processes_cpu_percent']):>5}%"
        )
    if c.get("celery_best_jobs_per_s"):
        lines.append(f"  Celery best: {c['celery_best_jobs_per_s']:,.0f} jobs/s")
    if c.get("post_jobs_32"):
        p = c["post_jobs_32"]
        lines.append(
            f"  POST /jobs x32: {p['req_per_s']:,.0f} req/s, p99 {p['p99_ms']:.1f} ms "
            f"(RTT ceiling 32 / ({round_trips_per_write()} x PG RTT) = "
            f"{_fmt(p['rtt_ceiling_req_per_s'])} req/s)"
        )
    for t in c.get("targets", []):
        v = t["value"]
        lines.append(f"  target {t['target']}: {_fmt(v, ',.2f')} {'pass' if t['ok'] else 'MISS'}")
    phases = results.get("phases", {})
    loads = ", ".join(
        f"{k} {v['loadavg_after'][0]:.1f}" for k, v in phases.items() if "loadavg_after" in v
    )
    lines.append(f"  load average (1 min) after each phase: {loads}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Re-render the section of a latest.json with today's formula: ceilings_report.py FILE."""
    import json
    from pathlib import Path

    if len(argv) != 1:
        print("usage: ceilings_report.py bench/results/latest.json")
        return 2
    results = json.loads(Path(argv[0]).read_text())
    net = results.get("network") or {}
    results["ceilings"] = ceilings_of(
        results, Rtt(net.get("sqs_rtt_ms", 0), net.get("pg_rtt_ms", 0))
    )
    print(render_ceilings(results))
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    sys.exit(main(sys.argv[1:]))
