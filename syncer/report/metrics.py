"""The run's counters in Prometheus text format, for node_exporter's textfile collector."""

from __future__ import annotations

from pathlib import Path

from syncer.local.storage import write_private_text
from syncer.run.stats import RunStats


def render(stats: RunStats) -> str:
    kind = stats.kind
    outcome_ok = 1 if stats.outcome == "ok" else 0
    rows = [
        ("syncer_last_run_timestamp_seconds", "gauge", "When the last run ended (Unix seconds).",
         stats.ended or stats.started),
        ("syncer_last_run_duration_seconds", "gauge", "How long the last run took.", round(stats.elapsed, 3)),
        ("syncer_last_run_success", "gauge", "1 if the last run finished with nothing failed.", outcome_ok),
        ("syncer_files_done", "gauge", "Files transferred by the last run.", stats.files_done),
        ("syncer_bytes_done", "gauge", "Bytes transferred by the last run.", stats.bytes_done),
        ("syncer_files_failed", "gauge", "Files that failed in the last run (retried next run).", stats.failed),
        ("syncer_files_failed_permanently", "gauge", "Files that failed for good in the last run.",
         stats.permanent),
        ("syncer_files_skipped", "gauge", "Files already up to date or skipped.", stats.skipped),
        ("syncer_files_total", "gauge", "Files the last run set out to transfer.", stats.files_total),
    ]
    out = []
    for name, typ, help_text, value in rows:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {typ}")
        out.append(f'{name}{{kind="{kind}"}} {value}')
    return "\n".join(out) + "\n"


def write_metrics(path: Path, stats: RunStats) -> None:
    """Atomically (temp + rename), so the collector never reads half a file."""
    write_private_text(path, render(stats))
