"""``syncer status``: real manifests written by real pulls over loopback, read-only, while busy."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import cli, write_config

from syncer.errors import ManifestError
from syncer.fakeserver import FakeServer, Faults
from syncer.manifest import Manifest, Update
from syncer.report import status as status

NEW_FILES = 3


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeServer, Path]]:
    """A pull that worked, then new files whose downloads all fail (bodies cut, one attempt only)."""
    folder = tmp_path_factory.mktemp("busy")
    srv = FakeServer(seed=3, users=2, files_per_user=3, visits=1, files_per_visit=2)
    with srv.run_in_thread():
        cfg = write_config(folder, srv, attempts=1, min_wait=0.0, max_wait=0.0)
        first = cli(["pull", "-c", str(cfg), "-q"], srv.api_key)
        assert first.exit_code == 0, first.output
        for i in range(NEW_FILES):
            srv.add_file("user", srv.users[0], f"scan {i}.pdf", b"%PDF-" + bytes(range(200)) * (i + 1))
        srv.set_faults(truncate_body=1.0)
        second = cli(["pull", "-c", str(cfg), "-q"], srv.api_key)
        assert second.exit_code == 1, second.output
        srv.set_faults(truncate_body=0.0)
        yield srv, cfg


def test_missing_manifest_is_exit_2_and_creates_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "syncer.toml"
    cfg.write_text('[manifest]\npath = "nowhere/manifest.sqlite"\n', encoding="utf-8")
    result = cli(["status", "-c", str(cfg)])
    assert result.exit_code == 2
    assert "no manifest at" in result.output and "nowhere/manifest.sqlite" in result.output
    assert not (tmp_path / "nowhere").exists()


def test_fresh_manifest_is_all_zero(tmp_path: Path) -> None:
    Manifest.open(tmp_path / "manifest.sqlite").close()
    cfg = tmp_path / "syncer.toml"
    cfg.write_text('[manifest]\npath = "manifest.sqlite"\n', encoding="utf-8")
    text = cli(["status", "-c", str(cfg)])
    assert text.exit_code == 0, text.output
    assert "pull: 0 items" in text.output and "no runs yet" in text.output
    doc = json.loads(cli(["status", "-c", str(cfg), "--json"]).stdout)
    for kind, states in (("pull", status.PULL_STATES), ("push", status.PUSH_STATES)):
        assert set(doc[kind]["states"]) == set(states)
        assert doc[kind]["total"] == {"count": 0, "bytes": 0}
        assert doc[kind]["failed_total"] == 0 and doc[kind]["failed"] == []
    assert doc["runs"] == []


def test_busy_manifest_json(busy: tuple[FakeServer, Path]) -> None:
    srv, cfg = busy
    result = cli(["status", "-c", str(cfg), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    files = srv.files()
    pull = doc["pull"]
    assert pull["total"]["count"] == len(files)
    assert pull["total"]["bytes"] == sum(f["size"] for f in files)
    assert pull["states"]["done"]["count"] == len(files) - NEW_FILES
    assert pull["states"]["failed"]["count"] == NEW_FILES == pull["failed_total"]
    assert len(pull["failed"]) == NEW_FILES
    new_ids = {f["id"] for f in files if f["name"].startswith("scan ")}
    assert {item["file_id"] for item in pull["failed"]} == new_ids
    for item in pull["failed"]:
        assert item["target"] == f"user:{srv.users[0]}"
        assert item["state"] == "failed" and item["attempts"] == 1
        assert item["error_class"] and item["last_error"]
    assert [r["outcome"] for r in doc["runs"]] == ["failed", "ok"]
    assert doc["runs"][0]["failed"] == NEW_FILES and doc["runs"][1]["files_done"] == len(files) - NEW_FILES
    assert all(r["kind"] == "pull" and r["ended"] and r["alive"] is None for r in doc["runs"])
    assert doc["push"]["total"]["count"] == 0
    assert "auth_code" not in result.stdout and "fullpath" not in result.stdout


def test_busy_manifest_text(busy: tuple[FakeServer, Path]) -> None:
    srv, cfg = busy
    result = cli(["status", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"pull: {len(srv.files())} items" in out
    assert f"failed pull items ({NEW_FILES} of {NEW_FILES}, newest first):" in out
    for f in srv.files():
        if f["name"].startswith("scan "):
            assert f"user:{srv.users[0]}/{f['id']}  failed  attempts 1" in out
    assert "\x1b" not in out and "\r" not in out and "auth_code" not in out
    limited = cli(["status", "-c", str(cfg), "--failed", "1", "--runs", "1"])
    assert f"failed pull items (1 of {NEW_FILES}" in limited.stdout and "last runs (1):" in limited.stdout


def test_status_answers_while_another_connection_writes(busy: tuple[FakeServer, Path]) -> None:
    _, cfg = busy
    db = sqlite3.connect(cfg.parent / "manifest.sqlite", isolation_level=None, timeout=1)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO runs (id, kind, started, outcome) VALUES ('uncommitted', 'pull', '2999', 'running')")
        result = cli(["status", "-c", str(cfg), "--json"])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert "uncommitted" not in {r["id"] for r in doc["runs"]}  # a snapshot of committed data only
        assert doc["pull"]["failed_total"] == NEW_FILES
    finally:
        db.execute("ROLLBACK")
        db.close()


def test_running_run_reports_whether_its_process_lives(tmp_path: Path) -> None:
    path = tmp_path / "manifest.sqlite"
    m = Manifest.open(path)
    try:
        live = m.start_run("pull")  # this process: alive
        m.conn.execute("INSERT INTO runs (id, kind, started, outcome, pid, host) VALUES"
                       " ('gone', 'pull', '0', 'running', 2147483000, (SELECT host FROM runs WHERE id = ?))", (live,))
    finally:
        m.close()
    doc = status.collect(path)
    alive = {r["id"]: r["alive"] for r in doc["runs"]}
    assert alive == {live: True, "gone": False}
    assert "running? (process gone)" in status.render_text(doc)


def test_rich_tables_treat_data_as_text(tmp_path: Path) -> None:
    from rich.console import Console

    path = tmp_path / "manifest.sqlite"
    m = Manifest.open(path)
    try:
        run_id = m.start_run("pull")
        m.apply_pull_listing(run_id, [{
            "target_type": "user", "target_id": "42", "file_id": "f-1", "category": "user_document",
            "remote_name": "x", "size": 10, "created": 1, "modified": 1, "ext": "pdf", "owner_id": "42",
            "local_path": "user/42/user_document/x", "path_key": "user/42/user_document/x", "state": "pending",
        }], [], [])
        m.apply([Update("pull_items", ("user", "42", "f-1"),
                        {"state": "failed", "last_error": "[bold]boom[/bold] at https://h/v?auth_code=SECRET\nnext",
                         "error_class": "ServerError"}, bump_attempts=True)], run_id)
        m.finish_run(run_id, "failed", {"failed": 1})
    finally:
        m.close()
    doc = status.collect(path)
    buf = io.StringIO()
    status.print_rich(doc, console=Console(file=buf, width=200, force_terminal=False, color_system=None))
    out = buf.getvalue()
    assert "[bold]boom[/bold]" in out and "SECRET" not in out
    assert "user:42/f-1" in out and "ServerError" in out
    text = status.render_text(doc)
    assert "\\nnext" in text and "SECRET" not in text  # one line per item: the newline is escaped


def test_status_during_a_real_pull(tmp_path: Path) -> None:
    """A pull in another process holds the lock and writes; status reads along, never waiting for it."""
    srv = FakeServer(seed=9, users=2, files_per_user=5, faults=Faults(latency_ms=60))
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, attempts=6, min_wait=0.0, max_wait=0.0)
        env = dict(os.environ, VSEE_API_TOKEN=srv.api_key)
        proc = subprocess.Popen([sys.executable, "-m", "syncer", "pull", "-c", str(cfg), "-q", "--concurrency", "1"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen: list[dict] = []
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    t = time.monotonic()
                    doc = status.collect(tmp_path / "manifest.sqlite")
                    assert time.monotonic() - t < 5
                    seen.append(doc)
                except ManifestError:
                    pass  # not created (or not migrated) yet
                time.sleep(0.05)
        finally:
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode(errors="replace")
    during = [d for d in seen if d["runs"] and d["runs"][0]["outcome"] == "running"]
    assert during, "status never saw the run in progress"
    assert all(d["runs"][0]["alive"] is True for d in during)
    assert any(0 < d["pull"]["states"]["done"]["count"] < len(srv.files()) for d in during)
    final = status.collect(tmp_path / "manifest.sqlite")
    assert final["runs"][0]["outcome"] == "ok" and final["pull"]["states"]["done"]["count"] == len(srv.files())
