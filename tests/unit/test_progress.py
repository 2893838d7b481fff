"""Progress: plain periodic lines off a terminal, a rich display on one, and the summary."""

from __future__ import annotations

import asyncio
import io

from syncer.report.metrics import render
from syncer.report.progress import make_reporter, progress_line, summary_text
from syncer.run.stats import RunStats


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


async def run_reporter(reporter, stats, seconds):
    task = asyncio.create_task(reporter(stats))
    await asyncio.sleep(seconds)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def test_plain_lines_every_interval_without_control_characters():
    stream = io.StringIO()
    stats = RunStats("pull", files_total=10, bytes_total=10_000)
    reporter = make_reporter(quiet=False, interval=0.05, stream=stream)
    stats.files_done, stats.bytes_done, stats.bytes_moving = 4, 4_000, 4_500
    await run_reporter(reporter, stats, 0.18)
    lines = stream.getvalue().splitlines()
    assert 2 <= len(lines) <= 4
    assert all(line.startswith("pull: 4/10 files") for line in lines)
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


async def test_rich_display_on_a_terminal():
    stream = FakeTTY()
    stats = RunStats("push", files_total=3, bytes_total=300, files_done=1, bytes_done=100)
    reporter = make_reporter(quiet=False, interval=30, stream=stream)
    await run_reporter(reporter, stats, 0.3)
    assert "push" in stream.getvalue() and "1/3 files" in stream.getvalue()


def test_quiet_shows_no_progress():
    assert make_reporter(quiet=True, interval=1) is None


def test_summary_and_metrics_name_the_outcome():
    stats = RunStats("pull", run_id="r1", files_done=5, bytes_done=2048, failed=1, permanent=1, outcome="failed")
    text = summary_text(stats)
    assert "pull failed: 5 files (2.0 KiB)" in text and "1 failed" in text and "run id r1" in text
    assert "failed 2" in progress_line(stats)
    prom = render(stats)
    assert 'syncer_last_run_success{kind="pull"} 0' in prom
    assert 'syncer_files_failed{kind="pull"} 1' in prom
    assert 'syncer_files_failed_permanently{kind="pull"} 1' in prom
