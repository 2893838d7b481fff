"""Progress while a run goes on, and the summary at its end.

On a terminal: a rich live display (files and bytes of the total known, rate, ETA, failures); log
records print above it through its console (:func:`syncer.logs.showing_display`).
Elsewhere (cron, CI, a pipe): one plain line every ``interval`` seconds, no control characters.
With ``log.format = "json"``: one JSON event (``"event": "progress"``) every ``interval`` seconds, on a
terminal too, so nothing but JSON lines reaches a log.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from typing import TextIO

from syncer import logs
from syncer.redact import escape
from syncer.run.stats import RunStats


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def progress_line(stats: RunStats) -> str:
    elapsed = max(stats.elapsed, 1e-6)
    rate = stats.bytes_moving / elapsed
    files_rate = stats.files_done / elapsed
    left = stats.bytes_total - stats.bytes_done
    eta = f"{left / rate:.0f}s" if rate > 0 and left > 0 else "-"
    return (f"{stats.kind}: {stats.files_done}/{stats.files_total} files, "
            f"{human_bytes(stats.bytes_done)}/{human_bytes(stats.bytes_total)}, "
            f"{files_rate:.1f} files/s, {human_bytes(rate)}/s, eta {eta}, "
            f"failed {stats.failed + stats.permanent}")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def summary_text(stats: RunStats) -> str:
    lines = [
        f"{stats.kind} {stats.outcome}: {stats.files_done} files ({human_bytes(stats.bytes_done)}) in "
        f"{stats.elapsed:.1f}s; {stats.skipped} already up to date; "
        f"{stats.failed} failed (retried next run); {stats.permanent} failed permanently",
    ]
    if stats.left_out:
        lines.append(f"{_n(stats.left_out, 'file')} left out by rule (neither up to date nor failed: see the"
                     " log or the lines above)")
    if stats.acknowledged:
        lines.append(f"{stats.acknowledged} failed permanently again, acknowledged by an operator (not counted as"
                     " failed; see syncer status)")
    if stats.targets_failed:
        lines.append(f"{_n(stats.targets_failed, 'target')} could not be listed: their files are not backed up"
                     " (see syncer status)")
    if stats.targets_empty:
        lines.append(f"{_n(stats.targets_empty, 'target')} listed no files (see syncer status)")
    if stats.adopted:
        lines.append(f"{stats.adopted} uploads found already stored after a lost answer (not sent again)")
    if stats.fatal_error:
        lines.append(f"stopped: {escape(stats.fatal_error)}")
    lines.append(f"run id {stats.run_id}")
    return "\n".join(lines)


def progress_json(stats: RunStats) -> str:
    """The progress line as a JSON event, with its numbers as fields."""
    return logs.json_line(f"syncer.{stats.kind}", "progress", progress_line(stats), kind=stats.kind,
                          run_id=stats.run_id or None, files_done=stats.files_done, files_total=stats.files_total,
                          bytes_done=stats.bytes_done, bytes_total=stats.bytes_total,
                          failed=stats.failed + stats.permanent, elapsed=round(stats.elapsed, 3))


def summary_json(stats: RunStats) -> str:
    """The end-of-run summary as one JSON event: the text and every counter."""
    return logs.json_line(f"syncer.{stats.kind}", "summary", summary_text(stats),
                          level="info" if stats.outcome == "ok" else "error", **stats.as_dict())


def make_reporter(*, quiet: bool, interval: float, stream: TextIO | None = None,
                  tty: bool | None = None, fmt: str = "text") -> Callable[[RunStats], Awaitable[None]] | None:
    """The coroutine the runner starts beside the job, or None when nothing should be shown."""
    stream = stream or sys.stderr
    if quiet:
        return None
    if fmt == "json":
        return lambda stats: _plain(stats, stream, interval, progress_json)
    is_tty = stream.isatty() if tty is None else tty
    if is_tty:
        return lambda stats: _rich(stats, stream)
    return lambda stats: _plain(stats, stream, interval, progress_line)


async def _plain(stats: RunStats, stream: TextIO, interval: float,
                 render: Callable[[RunStats], str] = progress_line) -> None:
    import asyncio  # here, not at the top: ``status`` uses this module's formatting and runs no loop

    next_at = time.monotonic() + interval
    while True:
        await asyncio.sleep(max(0.05, next_at - time.monotonic()))
        next_at += interval
        print(render(stats), file=stream, flush=True)


async def _rich(stats: RunStats, stream: TextIO) -> None:
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    console = Console(file=stream)
    # Log records go through this console while the bar is up: it prints them above the bar.
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[files]}"),
                  console=console, transient=True) as bar, logs.showing_display(console):
        task = bar.add_task(stats.kind, total=None, files="")
        try:
            while True:
                bar.update(task, total=stats.bytes_total or None, completed=stats.bytes_done,
                           files=f"{stats.files_done}/{stats.files_total} files, "
                                 f"{stats.failed + stats.permanent} failed")
                await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            bar.update(task, completed=stats.bytes_done)
            raise
