"""Logs beside progress (issue 12, defect 10): on a terminal, log lines print above the progress bar,
never glued to it; with ``--log-format json`` every line on stdout and stderr (progress, warnings, the
summary) is one JSON document, so a cron log of ``2>&1`` is JSON lines only."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from helpers import write_config

from syncer.fakeserver import FakeServer, Faults

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?:DEBUG|INFO|WARNING|ERROR) ")
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def failing_server() -> FakeServer:
    """Slow enough for the progress display to be up for a few seconds, with failures that log warnings."""
    return FakeServer(seed=7, users=6, files_per_user=8, visits=0,
                      faults=Faults(error_500=0.35, latency_ms=60.0, retry_after=0.0))


def test_json_logs_progress_and_summary_are_json_lines_only(tmp_path: Path) -> None:
    srv = failing_server()
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, attempts=1, min_wait=0.0, max_wait=0.0, concurrency=2)
        env = {**os.environ, "VSEE_API_TOKEN": srv.api_key, "SYNCER_CONFIG": "", "SYNCER_MANIFEST": ""}
        proc = subprocess.run([sys.executable, "-m", "syncer", "pull", "-c", str(cfg), "--log-format", "json",
                               "--progress-interval", "0.2"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-3000:]
    docs = []
    for line in proc.stdout.splitlines():
        try:
            docs.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not JSON: {line!r}") from None
    events = [d.get("event") for d in docs]
    assert events.count("progress") >= 2, events
    assert events[-1] == "summary" and docs[-1]["outcome"] == "failed" and docs[-1]["failed"] > 0
    assert any(d["level"] == "warning" for d in docs)
    progress = next(d for d in docs if d.get("event") == "progress")
    assert {"files_done", "files_total", "bytes_done", "failed"} <= set(progress)


def test_on_a_terminal_log_lines_print_above_the_progress_bar(tmp_path: Path) -> None:
    srv = failing_server()
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, attempts=1, min_wait=0.0, max_wait=0.0, concurrency=2)
        env = {**os.environ, "VSEE_API_TOKEN": srv.api_key, "SYNCER_CONFIG": "", "SYNCER_MANIFEST": "",
               "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}
        env.pop("NO_COLOR", None)
        master, slave = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "syncer", "pull", "-c", str(cfg)], env=env, cwd=tmp_path,
                                stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        out = b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        proc.wait(timeout=30)
        os.close(master)
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 1, text[-3000:]
    assert "files" in ESCAPE.sub("", text) and "\x1b[" in text, "no progress display was drawn"
    marked = ESCAPE.sub("\x00", text)  # an escape sequence (erase line, cursor moves) stands for itself
    starts = [m.start() for m in LOG_LINE.finditer(marked)]
    assert len(starts) >= 3, text[-3000:]
    glued = [marked[max(0, i - 60):i + 40] for i in starts if i > 0 and marked[i - 1] not in "\n\r\x00"]
    assert not glued, glued[:3]


def test_json_logs_a_refusal_before_the_run_is_a_json_line_too(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, base_url="http://127.0.0.1:9", account_code="x", targets=["user:1"])
    env = {**os.environ, "SYNCER_CONFIG": "", "SYNCER_MANIFEST": ""}
    env.pop("VSEE_API_TOKEN", None)
    proc = subprocess.run([sys.executable, "-m", "syncer", "pull", "-c", str(cfg), "--log-format", "json"], env=env,
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout
    [doc] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert doc["event"] == "error" and doc["exit_code"] == 2 and "VSEE_API_TOKEN" in doc["message"]
