"""Running it for real: the lock, signals, metrics, log formats and non-TTY output of `syncer pull`."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

from helpers import spawn_syncer, write_config

from syncer.fakeserver import FakeServer, Faults

RETRY = {"attempts": 10, "min_wait": 0.01, "max_wait": 0.05}  # patient enough for the injected faults, quick


def wait_for_progress(manifest: Path, minimum: int, timeout: float = 20) -> None:
    """Until the manifest records at least `minimum` finished files."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if manifest.exists():
            try:
                conn = sqlite3.connect(manifest, timeout=1)
                n = conn.execute("SELECT count(*) FROM pull_items WHERE state = 'done'").fetchone()[0]
                conn.close()
                if n >= minimum:
                    return
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"the run did not finish {minimum} files in {timeout}s")


def test_second_run_on_the_same_manifest_exits_75_naming_the_holder(tmp_path):
    srv = FakeServer(seed=21, users=8, files_per_user=10, faults=Faults(latency_ms=100))
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, **RETRY, concurrency=2)
        first = spawn_syncer(cfg, srv, "pull", "-q")
        wait_for_progress(tmp_path / "manifest.sqlite", 1)
        second = spawn_syncer(cfg, srv, "pull", "-q")
        out, err = second.communicate(timeout=30)
        assert second.returncode == 75, err.decode()
        assert f"pid {first.pid}" in err.decode()
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err.decode()[-2000:]


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    srv = FakeServer(seed=22, users=3, files_per_user=10, faults=Faults(latency_ms=40))
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, **RETRY, concurrency=2)
        first = spawn_syncer(cfg, srv, "pull", "-q")
        wait_for_progress(tmp_path / "manifest.sqlite", 1)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        second = spawn_syncer(cfg, srv, "pull", "-q")
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err.decode()[-2000:]
        conn = sqlite3.connect(tmp_path / "manifest.sqlite")
        outcomes = [r[0] for r in conn.execute("SELECT outcome FROM runs ORDER BY started")]
        conn.close()
        assert outcomes == ["killed", "ok"]


def test_sigterm_stops_cleanly_records_and_the_next_run_resumes(tmp_path):
    srv = FakeServer(seed=23, users=4, files_per_user=15, faults=Faults(latency_ms=50))
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, **RETRY, concurrency=2)
        proc = spawn_syncer(cfg, srv, "pull")
        wait_for_progress(tmp_path / "manifest.sqlite", 2)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 8, "SIGTERM did not stop the run within a few seconds"
        assert proc.returncode == 143, err.decode()[-2000:]
        assert "interrupted" in out.decode()
        conn = sqlite3.connect(tmp_path / "manifest.sqlite")
        done = conn.execute("SELECT count(*) FROM pull_items WHERE state = 'done'").fetchone()[0]
        outcome = conn.execute("SELECT outcome FROM runs").fetchone()[0]
        conn.close()
        assert 0 < done < len(srv.files())
        assert outcome == "interrupted"
        views_before = srv.counters["view"]
        proc = spawn_syncer(cfg, srv, "pull", "-q")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0
        # The rerun fetched only what was left (files in flight at the signal at most twice).
        assert srv.counters["view"] - views_before <= len(srv.files()) - done + 2


def test_metrics_file_json_logs_and_no_control_characters(tmp_path):
    srv = FakeServer(seed=24, users=2, files_per_user=6, hostile_names=True,
                     faults=Faults(error_500=0.2, reset_mid_body=0.1))
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, **RETRY, concurrency=4)
        metrics = tmp_path / "syncer.prom"
        proc = spawn_syncer(cfg, srv, "pull", "--log-format", "json", "--log-level", "debug",
                            "--metrics-file", str(metrics), "--progress-interval", "0.05")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        for stream in (out, err):
            assert b"\r" not in stream and b"\x1b" not in stream
        events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
        downloaded = [e for e in events if e.get("event") == "downloaded"]
        assert len(downloaded) == len(srv.files())
        for e in downloaded:
            assert {"run_id", "file_id", "target", "bytes", "duration"} <= set(e)
        text = metrics.read_text()
        assert f'syncer_files_done{{kind="pull"}} {len(srv.files())}' in text
        assert 'syncer_last_run_success{kind="pull"} 1' in text
        assert oct(metrics.stat().st_mode & 0o777) == "0o600"
        # Names of patients' files are not logged at info level.
        info_text = "\n".join(json.dumps(e) for e in events if e["level"] == "info")
        for f in srv.files():
            if len(f["name"]) > 6:
                assert f["name"] not in info_text


def test_second_sigint_stops_at_once_and_the_next_run_resumes(tmp_path):
    srv = FakeServer(seed=25, users=3, files_per_user=10, faults=Faults(latency_ms=50))
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, **RETRY, concurrency=2)
        proc = spawn_syncer(cfg, srv, "pull", "-q")
        wait_for_progress(tmp_path / "manifest.sqlite", 1)
        srv.set_faults(latency_ms=3000)  # in-flight requests would now outlast the grace period
        time.sleep(0.2)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 2.5, "the second SIGINT did not stop the run at once"
        assert proc.returncode == 130, err.decode()[-2000:]
        conn = sqlite3.connect(tmp_path / "manifest.sqlite")
        outcome = conn.execute("SELECT outcome FROM runs").fetchone()[0]
        conn.close()
        assert outcome == "interrupted"
        srv.set_faults(latency_ms=0)
        proc = spawn_syncer(cfg, srv, "pull", "-q")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert not list((tmp_path / "backup").rglob(".*")), "temp files left behind"


def test_a_metrics_file_in_a_missing_folder_is_refused_before_the_run(tmp_path):
    srv = FakeServer(seed=26, users=1, files_per_user=2)
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, **RETRY)
        proc = spawn_syncer(cfg, srv, "pull", "-q", "--metrics-file", str(tmp_path / "nope" / "syncer.prom"))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err.decode()
        assert b"--metrics-file" in err and b"folder does not exist" in err
        assert not (tmp_path / "manifest.sqlite").exists() and srv.counters["list"] == 0
