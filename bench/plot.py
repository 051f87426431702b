"""The benchmark's plot: bench/results/latest.png from a results dict (latest.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def level_label(level: dict[str, Any], sep: str) -> str:
    """Clients, and the API's process count when it is not one."""
    procs = level.get("api_processes", 1)
    return str(level["concurrency"]) + (f"{sep}({procs} API procs)" if procs > 1 else "")


def plot(results: dict[str, Any], path: Path) -> None:
    """The four panels (ingest, end-to-end, latency, RSS) as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    lim = results.get("limits", {})
    env = results.get("environment", {})
    fig.suptitle(
        f"jobq benchmark ({env.get('mode', '')}, {env.get('cpus')} CPUs, {env.get('when', '')}, "
        f"git {env.get('git', '')}); PostgreSQL 16 (pgserver) + fauxqs, one machine",
        fontsize=10,
    )

    ax = axes[0][0]
    levels = results.get("ingest", {}).get("levels", [])
    if levels:
        xs = [level_label(lvl, "\n") for lvl in levels]
        bars = ax.bar(xs, [lvl["req_per_s"] for lvl in levels], color="#4c72b0", label="POST /jobs")
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        if lim.get("insert_commit_per_s"):
            ax.axhline(
                lim["insert_commit_per_s"],
                color="k",
                ls="--",
                lw=1,
                label="raw INSERT+COMMIT (1 conn)",
            )
            ax.axhline(
                lim["insert_commit_per_s"] / 2, color="r", ls=":", lw=1, label="target: 50% of raw"
            )
        batch = results.get("ingest", {}).get("batch", {})
        if batch.get("jobs_per_s"):
            ax.axhline(
                batch["jobs_per_s"],
                color="g",
                ls="-.",
                lw=1,
                label="POST /jobs/batch x100 (jobs/s)",
            )
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("requests/s")
        ax.set_title("API ingest throughput")
        ax.legend(fontsize=8)

    ax = axes[0][1]
    if levels:
        xs = [level_label(lvl, "\n") for lvl in levels]
        for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
            ax.plot(xs, [lvl[key] for lvl in levels], style, label=key.replace("_ms", ""))
        ax.axhline(50, color="r", ls=":", lw=1, label="target: p99 < 50 ms at 32")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("latency, ms (log scale)")
        ax.set_title("API ingest latency")
        ax.legend(fontsize=8)

    ax = axes[1][0]
    labels, values, colors = [], [], []
    for r in results.get("e2e", {}).get("runs", []):
        labels.append(f"jobq\n{r['workers']}w x{r['concurrency']}")
        values.append(r["jobs_per_s"])
        colors.append("#4c72b0")
    pl = results.get("pipeline")
    if pl:
        labels.append(f"jobq via\nAPI {pl['workers']}w x{pl['concurrency']}")
        values.append(pl["jobs_per_s"])
        colors.append("#8172b2")
    for r in results.get("celery", {}).get("runs", []):
        labels.append(f"Celery\n{r['pool']} {r['concurrency']}")
        values.append(r["jobs_per_s"])
        colors.append("#dd8452")
    if values:
        ax.bar_label(ax.bar(labels, values, color=colors), fmt="%.0f", fontsize=8)
        recv = lim.get("sqs_receive_delete_batch_msgs_per_s")
        if recv:
            ax.axhline(recv, color="k", ls="--", lw=1, label="raw Receive+DeleteMessageBatch")
            ax.axhline(recv / 2, color="r", ls=":", lw=1, label="target: 50% of raw")
            ax.legend(fontsize=8)
        runs = results.get("e2e", {}).get("runs") or [{}]
        ax.set_ylabel("jobs/s")
        ax.set_title(f"End-to-end no-op jobs ({runs[0].get('jobs', '?')} per run)")
        ax.tick_params(axis="x", labelsize=7)

    ax = axes[1][1]
    mem_labels, mem_values, mem_colors = [], [], []
    ing = results.get("ingest")
    if ing:
        mem_labels.append("jobq API")
        mem_values.append(ing["api_peak_rss_mb"])
        mem_colors.append("#8172b2")
    e2e_runs = results.get("e2e", {}).get("runs", [])
    if e2e_runs:
        mem_labels.append("jobq worker\n(one process)")
        mem_values.append(max(r["worker_peak_rss_mb"] for r in e2e_runs))
        mem_colors.append("#4c72b0")
    for r in results.get("celery", {}).get("runs", []):
        mem_labels.append(f"Celery {r['pool']} {r['concurrency']}\n(all processes)")
        mem_values.append(r["peak_rss_mb_incl_pool"])
        mem_colors.append("#dd8452")
    if mem_values:
        ax.bar_label(ax.bar(mem_labels, mem_values, color=mem_colors), fmt="%.0f", fontsize=8)
        ax.axhline(150, color="r", ls=":", lw=1, label="target: worker < 150 MB")
        ax.set_ylabel("peak RSS, MB")
        ax.set_title("Memory")
        ax.legend(fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
