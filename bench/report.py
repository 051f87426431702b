"""Turn a results dict (bench/results/latest.json) into ratios, targets, a text table and a plot.

.venv/bin/python bench/report.py [bench/results/latest.json]   # re-render table and PNG
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from plot import level_label, plot

MB = 1024 * 1024


# -- ratios and targets ----------------------------------------------------------------------


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios next to absolute numbers, and the issue's targets as pass/MISS."""
    lim = results.get("limits", {})
    levels = results.get("ingest", {}).get("levels", [])
    e2e_runs = results.get("e2e", {}).get("runs", [])
    celery_runs = results.get("celery", {}).get("runs", [])
    latency = results.get("latency", {})
    pipeline = results.get("pipeline", {})
    ratios: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []

    def target(name: str, value: float | None, goal: str, ok: bool | None, unit: str) -> None:
        result = "n/a" if value is None or ok is None else ("pass" if ok else "MISS")
        targets.append(
            {"target": name, "value": value, "goal": goal, "unit": unit, "result": result}
        )

    insert = lim.get("insert_commit_per_s")
    recv = lim.get("sqs_receive_delete_batch_msgs_per_s")
    # The targets take the better of one API process and one per core (both are shown).
    at32 = max(
        (lvl for lvl in levels if lvl["concurrency"] == 32),
        key=lambda r: r["req_per_s"],
        default=None,
    )
    if at32 and at32.get("api_processes", 1) > 1:
        ratios["ingest@32 best config"] = f"{at32['api_processes']} API processes"
    if insert and at32:
        ratios["ingest@32 / raw INSERT+COMMIT (1 conn)"] = at32["req_per_s"] / insert
        if lim.get("insert_commit_8conn_per_s"):
            ratios["ingest@32 / raw INSERT+COMMIT (8 conns)"] = (
                at32["req_per_s"] / lim["insert_commit_8conn_per_s"]
            )
    batch = results.get("ingest", {}).get("batch", {})
    if insert and batch.get("jobs_per_s"):
        ratios["POST /jobs/batch jobs/s / raw INSERT+COMMIT (1 conn)"] = (
            batch["jobs_per_s"] / insert
        )
    ratio = ratios.get("ingest@32 / raw INSERT+COMMIT (1 conn)")
    target(
        "POST /jobs at 32 clients (better API config) / raw INSERT+COMMIT",
        ratio,
        ">= 0.50",
        None if ratio is None else ratio >= 0.5,
        "x",
    )
    target(
        "POST /jobs p99 at 32 clients (same config)",
        at32["p99_ms"] if at32 else None,
        "< 50 ms",
        None if not at32 else at32["p99_ms"] < 50,
        "ms",
    )
    best = max(e2e_runs, key=lambda r: r["jobs_per_s"], default=None)
    if best and recv:
        ratios["e2e best / raw Receive+DeleteMessageBatch"] = best["jobs_per_s"] / recv
        ratios["e2e best config"] = f"{best['workers']} worker(s) x {best['concurrency']}"
        if lim.get("sqs_receive_delete_single_msgs_per_s"):
            ratios["e2e best / raw Receive+DeleteMessage (1 per msg)"] = (
                best["jobs_per_s"] / lim["sqs_receive_delete_single_msgs_per_s"]
            )
    if pipeline and recv:
        ratios["e2e via API / raw Receive+DeleteMessageBatch"] = pipeline["jobs_per_s"] / recv
    ratio = ratios.get("e2e best / raw Receive+DeleteMessageBatch")
    target(
        "end-to-end (best) / raw Receive+DeleteMessageBatch",
        ratio,
        ">= 0.50",
        None if ratio is None else ratio >= 0.5,
        "x",
    )
    best_celery = max(celery_runs, key=lambda r: r["jobs_per_s"], default=None)
    if best and best_celery and best_celery["jobs_per_s"] > 0:
        ratios["jobq best / Celery best"] = best["jobs_per_s"] / best_celery["jobs_per_s"]
        ratios["Celery best config"] = f"{best_celery['pool']} -c {best_celery['concurrency']}"
    ratio = ratios.get("jobq best / Celery best")
    target(
        "jobq end-to-end / Celery end-to-end (best vs best)",
        ratio,
        ">= 3.0",
        None if ratio is None else ratio >= 3.0,
        "x",
    )
    p50 = latency.get("enqueue_to_start_p50_ms")
    target("enqueue->start p50 when idle", p50, "< 50 ms", None if p50 is None else p50 < 50, "ms")
    rss = [r.get("worker_peak_rss_mb", 0) for r in e2e_runs]
    rss.append(pipeline.get("worker_peak_rss_mb", 0))
    worker_rss = max(rss) or None
    target(
        "worker peak RSS",
        worker_rss,
        "< 150 MB",
        None if worker_rss is None else worker_rss < 150,
        "MB",
    )
    if insert and lim.get("insert_commit_8conn_per_s"):
        ratios["raw INSERT+COMMIT 8 conns / 1 conn"] = lim["insert_commit_8conn_per_s"] / insert
    if recv and lim.get("sqs_receive_delete_single_msgs_per_s"):
        ratios["raw DeleteMessage (1/msg) / DeleteMessageBatch rate"] = (
            lim["sqs_receive_delete_single_msgs_per_s"] / recv
        )
    return {"ratios": ratios, "targets": targets}


# -- text table ------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  " + "  ".join([first, *rest]).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _n(v: Any, nd: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, int | float):
        return f"{v:,.{nd}f}"
    return str(v)


def render_table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    env = results.get("environment", {})
    add(
        f"jobq benchmark ({env.get('mode', '?')}) {env.get('when', '')}  cpus={env.get('cpus')}  "
        f"git {env.get('git', '?')}"
    )
    add(f"  PostgreSQL: {env.get('postgresql', '?')}")
    add(f"  SQS:        {env.get('sqs_server', '?')}")
    if "machine_busy_before_percent" in env:
        add(
            f"  machine busy before the run: {env['machine_busy_before_percent']}% "
            f"(load average {env.get('loadavg_before')})"
        )
    phases = results.get("phases") or {}
    if phases:
        parts = []
        for name, info in phases.items():
            other = info.get("other_processes_cpu_percent")
            parts.append(
                f"{name} {info['seconds']:.0f} s"
                + (f" (others {other:.0f}% CPU)" if other is not None else "")
            )
        add("  phases: " + ", ".join(parts))
        if any((i.get("other_processes_cpu_percent") or 0) > 15 for i in phases.values()):
            add("  WARNING: other processes used the CPU during the run: numbers are low")
    lim = results.get("limits") or {}
    insert = lim.get("insert_commit_per_s")
    recv = lim.get("sqs_receive_delete_batch_msgs_per_s")
    if lim:
        add("")
        add("Limits (same machine, same run; one Python client thread unless noted)")
        rows = [
            ["raw psycopg2 INSERT+COMMIT, 1 connection", _n(insert), "/s"],
            [
                "raw psycopg2 INSERT+COMMIT, 8 connections",
                _n(lim.get("insert_commit_8conn_per_s")),
                "/s",
            ],
            ["raw boto3 SendMessageBatch", _n(lim.get("sqs_send_batch_msgs_per_s")), "msgs/s"],
            ["raw boto3 ReceiveMessage + DeleteMessageBatch", _n(recv), "msgs/s"],
            [
                "raw boto3 ReceiveMessage + DeleteMessage (1 per msg)",
                _n(lim.get("sqs_receive_delete_single_msgs_per_s")),
                "msgs/s",
            ],
        ]
        lines.extend(_table(["limit", "rate", ""], rows))
    ing = results.get("ingest")
    if ing:
        add("")
        add(
            'API ingest: POST /jobs {"task":"echo"}, closed loop, load generator in its own process'
        )
        rows = []
        for lvl in ing["levels"]:
            rows.append(
                [
                    level_label(lvl, " "),
                    _n(lvl["req_per_s"]),
                    _n(lvl["p50_ms"], 1),
                    _n(lvl["p95_ms"], 1),
                    _n(lvl["p99_ms"], 1),
                    str(lvl["requests"] - lvl["ok"]),
                    f"{lvl['req_per_s'] / insert:.2f}" if insert else "-",
                    _n(lvl.get("api_cpu_percent")) + "%",
                    _n(lvl.get("api_cpu_ms_per_request"), 1),
                    _n(lvl.get("machine_busy_percent")) + "%",
                    _n(lvl.get("other_processes_cpu_percent")) + "%",
                ]
            )
        lines.extend(
            _table(
                [
                    "clients",
                    "req/s",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "non-2xx",
                    "÷ raw INSERT",
                    "API CPU",
                    "CPU ms/req",
                    "machine",
                    "others",
                ],
                rows,
            )
        )
        b = ing.get("batch") or {}
        if "skipped" in b:
            add(f"  POST /jobs/batch: skipped ({b['skipped']})")
        elif b:
            add(
                f"  POST /jobs/batch (100 jobs per request, 8 clients): {b['jobs_per_s']:,.0f} "
                f"jobs/s, p50 {b['p50_ms']:.0f} ms, p99 {b['p99_ms']:.0f} ms"
                + (f" ({b['jobs_per_s'] / insert:.2f}x raw INSERT)" if insert else "")
            )
        backlog = b.get("publish_backlog") if isinstance(b, dict) else None
        if backlog:
            add(
                f"  after the batch burst {backlog['unpublished_after_burst']:,} accepted jobs "
                f"were "
                f"not yet sent to SQS; the API published {backlog['published_per_s']:,.0f}/s "
                f"afterwards ({backlog['left_after_s']:,} left after {backlog['seconds']:.0f} s)"
            )
        add(f"  API peak RSS {ing['api_peak_rss_mb']:.0f} MB")
    e2e = results.get("e2e")
    if e2e:
        add("")
        add(f"End-to-end, no-op `echo` jobs ({e2e['mode']})")
        add(
            "  jobs/s = (N-1) / (last finished_at - first finished_at); wall includes process start"
        )
        rows = []
        for r in e2e["runs"]:
            rows.append(
                [
                    str(r["workers"]),
                    str(r["concurrency"]),
                    str(r["succeeded"]),
                    _n(r["jobs_per_s"]),
                    _n(r["span_s"], 1),
                    _n(r["wall_s"], 1),
                    f"{r['jobs_per_s'] / recv:.2f}" if recv else "-",
                    _n(r.get("worker_cpu_ms_per_job"), 1),
                    _n(r.get("machine_busy_percent")) + "%",
                    _n(r.get("other_processes_cpu_percent")) + "%",
                    _n(r["worker_peak_rss_mb"]),
                ]
            )
        lines.extend(
            _table(
                [
                    "workers",
                    "conc.",
                    "jobs",
                    "jobs/s",
                    "span s",
                    "wall s",
                    "÷ raw recv+del",
                    "CPU ms/job",
                    "machine",
                    "others",
                    "RSS MB",
                ],
                rows,
            )
        )
    pl = results.get("pipeline")
    if pl:
        add(
            f"  through the API (32 clients) + {pl['workers']} worker(s) x {pl['concurrency']}: "
            f"{pl['jobs_per_s']:,.0f} jobs/s from first created to last finished "
            f"({pl['created_to_done_s']:.1f} s for {pl['jobs']}; submit "
            f"{pl['submit_req_per_s']:,.0f} req/s)"
        )
    cel = results.get("celery")
    if cel:
        add("")
        add(f"Peer: Celery ({cel['version']}; {cel['setup']}), same workload, same servers")
        rows = []
        for r in cel["runs"]:
            rows.append(
                [
                    r["pool"],
                    str(r["concurrency"]),
                    str(r["succeeded"]),
                    _n(r["jobs_per_s"]),
                    _n(r["span_s"], 1),
                    _n(r["wall_s"], 1),
                    _n(r.get("cpu_ms_per_job"), 1),
                    _n(r.get("machine_busy_percent")) + "%",
                    _n(r.get("other_processes_cpu_percent")) + "%",
                    _n(r["peak_rss_mb_incl_pool"]),
                ]
            )
        lines.extend(
            _table(
                [
                    "pool",
                    "conc.",
                    "jobs",
                    "jobs/s",
                    "span s",
                    "wall s",
                    "CPU ms/job",
                    "machine",
                    "others",
                    "RSS MB (all procs)",
                ],
                rows,
            )
        )
    lat = results.get("latency")
    if lat:
        add("")
        add(
            f"Enqueue -> start at low load ({lat['jobs']} jobs via POST /jobs, one every "
            f"{lat['pause_s']} s; {lat['worker']})"
        )
        rows = [
            [
                "started_at - created_at",
                _n(lat["enqueue_to_start_p50_ms"], 1),
                _n(lat["enqueue_to_start_p99_ms"], 1),
            ],
            [
                "finished_at - created_at",
                _n(lat["enqueue_to_done_p50_ms"], 1),
                _n(lat["enqueue_to_done_p99_ms"], 1),
            ],
            [
                "POST /jobs round trip (client)",
                _n(lat["post_p50_ms"], 1),
                _n(lat["post_p99_ms"], 1),
            ],
        ]
        lines.extend(_table(["", "p50 ms", "p99 ms"], rows))
    summary = results.get("summary") or summarize(results)
    if summary.get("ratios"):
        add("")
        add("Ratios")
        for k, v in summary["ratios"].items():
            add(f"  {k:<55} {v:.2f}" if isinstance(v, float) else f"  {k:<55} {v}")
    if summary.get("targets"):
        add("")
        add("Targets (issue 7)")
        for t in summary["targets"]:
            if t["value"] is None:
                value = "-"
            elif t["unit"] == "x":
                value = f"{t['value']:.2f}x"
            else:
                value = f"{t['value']:.1f} {t['unit']}"
            add(f"  {t['result']:<5} {t['target']:<52} {value:>10}  (goal {t['goal']})")
    errors = results.get("errors")
    if errors:
        add("")
        add("Phases that failed (details in latest.json)")
        for phase, err in errors.items():
            last = [ln for ln in err.strip().splitlines() if ln.strip()]
            add(f"  {phase}: {last[-1] if last else err}")
    if results.get("interrupted"):
        add("")
        add("INTERRUPTED: partial results")
    return "\n".join(lines)


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results/latest.json"
    data = json.loads(src.read_text())
    data["summary"] = summarize(data)
    plot(data, src.with_suffix(".png"))
    print(render_table(data))
