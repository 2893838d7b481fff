"""The run's counters in Prometheus text format, for node_exporter's textfile collector.

Every gauge describes the last run of its ``kind``.  ``syncer_last_run_success`` is 1 only when the run
ended ``ok``: nothing selected failed (this run or before, unless acknowledged), no target failed to
list, no signal, no fatal error.  The table of metric names is in README.md ("Metrics").
"""

from __future__ import annotations

from pathlib import Path

from syncer.local.storage import write_private_text
from syncer.run.stats import RunStats


def _label(value: str) -> str:
    """A label value as the text format wants it (backslash, quote and newline escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(stats: RunStats) -> str:
    kind = _label(stats.kind)
    outcome_ok = 1 if stats.outcome == "ok" else 0
    rows = [
        ("syncer_last_run_timestamp_seconds", "gauge", "When the last run ended (Unix seconds).",
         stats.ended or stats.started),
        ("syncer_last_run_duration_seconds", "gauge", "How long the last run took.", round(stats.elapsed, 3)),
        ("syncer_last_run_success", "gauge",
         "1 if the last run ended with nothing selected left failed (acknowledged failures aside).", outcome_ok),
        ("syncer_files_done", "gauge", "Files transferred by the last run.", stats.files_done),
        ("syncer_bytes_done", "gauge", "Bytes transferred by the last run.", stats.bytes_done),
        ("syncer_files_failed", "gauge", "Files failed in the last run, retried next run.", stats.failed),
        ("syncer_files_failed_permanently", "gauge", "Files failed permanently in the last run (not acknowledged).",
         stats.permanent),
        ("syncer_files_acknowledged", "gauge", "Files failed permanently again whose failure an operator acknowledged.",
         stats.acknowledged),
        ("syncer_files_skipped", "gauge", "Files already up to date or left out by rule.",
         stats.skipped + stats.left_out),
        ("syncer_files_total", "gauge", "Files the last run set out to transfer.", stats.files_total),
        ("syncer_targets_failed", "gauge", "Targets whose listing failed in the last run (pull).",
         stats.targets_failed),
        ("syncer_targets_empty", "gauge", "Targets that listed no files in the last run (pull).",
         stats.targets_empty),
    ]
    out = []
    for name, typ, help_text, value in rows:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {typ}")
        out.append(f'{name}{{kind="{kind}"}} {value}')
    # One series per error class: what is failing, not only how much (a handful of classes at most).
    out.append("# HELP syncer_items_failed Items left failed by the last run (failed or permanent), by reason.")
    out.append("# TYPE syncer_items_failed gauge")
    for reason, n in sorted(stats.failed_reasons.items()):
        out.append(f'syncer_items_failed{{kind="{kind}",reason="{_label(reason)}"}} {n}')
    return "\n".join(out) + "\n"


def write_metrics(path: Path, stats: RunStats) -> None:
    """Atomically (temp + rename), so the collector never reads half a file."""
    write_private_text(path, render(stats))
