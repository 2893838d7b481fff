"""``syncer verify``: re-hash a real backup (made by a real pull over loopback) against the manifest."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import NO_SERVER, cli, write_config

from syncer.fakeserver import FakeServer
from syncer.manifest import Manifest
from syncer.report import verify


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    srv = FakeServer(seed=5, users=2, files_per_user=4, visits=1, files_per_visit=2)
    with srv.run_in_thread():
        yield srv


@pytest.fixture(scope="module")
def pristine(server: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pristine")
    cfg = write_config(folder, server)
    result = cli(["pull", "-c", str(cfg), "-q"], server.api_key)
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def backup(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the backup and its manifest, with a config pointing at them."""
    shutil.copytree(pristine / "backup", tmp_path / "backup", symlinks=True)
    shutil.copy2(pristine / "manifest.sqlite", tmp_path / "manifest.sqlite")
    shutil.copy2(pristine / "syncer.toml", tmp_path / "syncer.toml")
    return tmp_path


def done_rows(folder: Path) -> list[dict]:
    m = Manifest.open(folder / "manifest.sqlite", create=False, readonly=True)
    try:
        return sorted(m.pull_done_rows(), key=lambda r: r["local_path"])
    finally:
        m.close()


def verify_json(folder: Path, *args: str) -> tuple[int, dict]:
    result = cli(["verify", "-c", str(folder / "syncer.toml"), "--json", *args])
    return result.exit_code, json.loads(result.stdout)


def test_all_intact(backup: Path, server: FakeServer) -> None:
    result = cli(["verify", "-c", str(backup / "syncer.toml"), "--all"])
    assert result.exit_code == 0, result.output
    n = len(server.files())
    assert f"checked {n} of {n} backed-up files (all)" in result.stdout
    assert f"{n} ok, 0 missing, 0 changed, 0 unreadable" in result.stdout
    code, doc = verify_json(backup, "--all")
    assert code == 0 and doc["passed"] is True
    assert doc["checked"] == doc["ok"] == doc["eligible"] == n
    assert doc["bytes_hashed"] == sum(f["size"] for f in server.files())
    assert doc["missing"] == doc["changed"] == doc["unreadable"] == []


def test_flipped_byte_is_changed(backup: Path) -> None:
    row = next(r for r in done_rows(backup) if r["size"] > 10)
    path = backup / "backup" / row["local_path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = cli(["verify", "-c", str(backup / "syncer.toml"), "--all"])
    assert result.exit_code == 1
    assert "1 changed" in result.stdout
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("changed"))
    assert f"{row['target_type']}:{row['target_id']}/{row['file_id']}" in line and row["local_path"] in line
    code, doc = verify_json(backup, "--all")
    assert code == 1 and doc["passed"] is False and doc["missing"] == []
    [changed] = doc["changed"]
    assert changed["file_id"] == row["file_id"] and changed["local_path"] == row["local_path"]
    assert changed["expected_sha256"] == row["sha256"]
    assert changed["actual_sha256"] == hashlib.sha256(data).hexdigest()


def test_deleted_file_is_missing(backup: Path) -> None:
    row = done_rows(backup)[0]
    (backup / "backup" / row["local_path"]).unlink()
    result = cli(["verify", "-c", str(backup / "syncer.toml"), "--all"])
    assert result.exit_code == 1
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("missing"))
    assert f"{row['target_type']}:{row['target_id']}/{row['file_id']}" in line and row["local_path"] in line
    code, doc = verify_json(backup, "--all")
    assert code == 1 and [p["file_id"] for p in doc["missing"]] == [row["file_id"]] and doc["changed"] == []


def test_truncated_and_symlinked_files_are_changed(backup: Path) -> None:
    rows = [r for r in done_rows(backup) if r["size"] > 10]
    truncated, linked = backup / "backup" / rows[0]["local_path"], backup / "backup" / rows[1]["local_path"]
    truncated.write_bytes(truncated.read_bytes()[:-1])
    outside = backup / "elsewhere"
    outside.write_bytes(linked.read_bytes())  # same bytes: only the link itself is wrong
    linked.unlink()
    linked.symlink_to(outside)
    code, doc = verify_json(backup, "--all")
    assert code == 1
    details = {p["file_id"]: p["detail"] for p in doc["changed"]}
    assert details[rows[0]["file_id"]].startswith("size ")
    assert "symbolic link" in details[rows[1]["file_id"]]


def test_sample(backup: Path, server: FakeServer) -> None:
    code, doc = verify_json(backup, "--sample", "3")
    assert code == 0 and doc["mode"] == "sample"
    assert doc["checked"] == doc["ok"] == 3 and doc["eligible"] == len(server.files())
    result = cli(["verify", "-c", str(backup / "syncer.toml"), "--sample", "3"])
    assert f"checked 3 of {len(server.files())} backed-up files (a random sample)" in result.stdout
    code, doc = verify_json(backup)  # the default sample (100) is larger than this backup: all of it
    assert code == 0 and doc["checked"] == len(server.files())


def test_sample_checks_exactly_n_distinct_done_files_and_all_checks_all(backup: Path) -> None:
    """With the backup folder gone every file checked is reported missing, so the report names exactly the
    files chosen: N distinct ones, only among those recorded done (a failed row is never chosen)."""
    rows = done_rows(backup)
    failed = rows[0]["file_id"]
    conn = sqlite3.connect(backup / "manifest.sqlite")
    with conn:
        conn.execute("UPDATE pull_items SET state = 'failed' WHERE file_id = ?", (failed,))
    conn.close()
    done = {r["file_id"] for r in rows} - {failed}
    shutil.rmtree(backup / "backup")
    seen: set[str] = set()
    for _ in range(8):
        code, doc = verify_json(backup, "--sample", "4")
        chosen = [p["file_id"] for p in doc["missing"]]
        assert code == 1 and doc["checked"] == 4 and doc["eligible"] == len(done)
        assert len(set(chosen)) == 4 and set(chosen) <= done, chosen
        seen.update(chosen)
    assert len(seen) > 4, "eight samples of 4 out of 11 were all the same 4 files: not random"
    code, doc = verify_json(backup, "--all")
    assert code == 1 and doc["checked"] == len(done)
    assert sorted(p["file_id"] for p in doc["missing"]) == sorted(done)


def test_sample_memory_stays_flat_with_a_big_manifest(tmp_path: Path) -> None:
    """The sample is chosen in SQL: picking 10 of 100,000 rows allocates a few kB in Python, where
    reading every row to choose (the old way) allocated tens of MB."""
    path = tmp_path / "manifest.sqlite"
    Manifest.open(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO pull_items (target_type, target_id, file_id, local_path, path_key, state, size, sha256)"
            " VALUES ('user', ?, ?, ?, ?, 'done', 1, ?)",
            ((str(i % 100), f"f{i}", f"user/{i % 100}/d/n{i}", f"user/{i % 100}/d/n{i}", "0" * 64)
             for i in range(100_000)))
    conn.close()
    tracemalloc.start()
    try:
        report = verify.verify(path, tmp_path / "nothing-here", sample=10, workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.eligible == 100_000 and report.checked == 10 and len(report.of_kind("missing")) == 10
    assert peak < 2_000_000, f"choosing 10 of 100,000 rows peaked at {peak / 1e6:.1f} MB of Python memory"


def test_all_reads_the_manifest_in_pages_covering_every_row_once(backup: Path) -> None:
    m = Manifest.open(backup / "manifest.sqlite", create=False, readonly=True)
    try:
        pages = list(m.pull_done_pages(size=3))
        every = m.pull_done_rows()
        assert m.pull_done_count() == len(every)
    finally:
        m.close()
    assert len(pages) == -(-len(every) // 3) and all(len(p) <= 3 for p in pages)
    paged = [r["file_id"] for p in pages for r in p]
    assert sorted(paged) == sorted(r["file_id"] for r in every) and len(set(paged)) == len(paged)


def test_sample_and_all_together_is_a_usage_error(backup: Path) -> None:
    result = cli(["verify", "-c", str(backup / "syncer.toml"), "--sample", "3", "--all"])
    assert result.exit_code == 2 and "not both" in result.output


def test_remote_deleted_files_are_still_verified(tmp_path: Path) -> None:
    srv = FakeServer(seed=6)
    with srv.run_in_thread():
        user = srv.add_user()
        keep = srv.add_file("user", user, "keep.txt", b"kept")
        gone = srv.add_file("user", user, "gone.txt", b"deleted on the server, kept in the backup")
        cfg = write_config(tmp_path, srv, targets=[f"user:{user}"])
        assert cli(["pull", "-c", str(cfg), "-q"], srv.api_key).exit_code == 0
        srv.delete_file(gone["id"])
        assert cli(["pull", "-c", str(cfg), "-q"], srv.api_key).exit_code == 0
    status = json.loads(cli(["status", "-c", str(cfg), "--json"]).stdout)
    assert status["pull"]["states"]["remote_deleted"]["count"] == 1
    code, doc = verify_json(tmp_path, "--all")
    assert code == 0 and doc["checked"] == 2
    (tmp_path / "backup" / "user" / user / "user_document" / "gone.txt").write_bytes(b"tampered")
    code, doc = verify_json(tmp_path, "--all")
    assert code == 1 and [p["file_id"] for p in doc["changed"]] == [gone["id"]]
    assert keep["id"] not in {p["file_id"] for p in doc["changed"]}


def test_verify_is_read_only(backup: Path) -> None:
    manifest = backup / "manifest.sqlite"
    (backup / "backup" / done_rows(backup)[0]["local_path"]).unlink()
    before = (hashlib.sha256(manifest.read_bytes()).hexdigest(), manifest.stat().st_mtime_ns)
    assert cli(["verify", "-c", str(backup / "syncer.toml"), "--all"]).exit_code == 1
    assert (hashlib.sha256(manifest.read_bytes()).hexdigest(), manifest.stat().st_mtime_ns) == before
    wal = manifest.with_name(manifest.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_no_manifest_is_exit_2(tmp_path: Path) -> None:
    write_config(tmp_path, **NO_SERVER)
    result = cli(["verify", "-c", str(tmp_path / "syncer.toml")])
    assert result.exit_code == 2 and "no manifest at" in result.output
    assert not (tmp_path / "manifest.sqlite").exists()


def test_library_with_more_workers_and_progress(backup: Path, server: FakeServer) -> None:
    calls: list[tuple[int, int, int]] = []
    report = verify.verify(backup / "manifest.sqlite", backup / "backup", sample=None, workers=3,
                           on_progress=lambda *a: calls.append(a))
    assert report.passed and report.checked == len(server.files())
    assert calls and calls[-1][0] == calls[-1][1] == report.checked


def test_progress_printer_plain_and_tty() -> None:
    plain = io.StringIO()
    p = verify.ProgressPrinter(plain, tty=False, interval=0.0)
    p(1, 10, 2048)
    p(2, 10, 4096)
    p.close()
    lines = plain.getvalue().splitlines()
    assert lines == [ln for ln in lines if ln.startswith("verify: ")] and len(lines) == 2
    assert "\r" not in plain.getvalue() and "\x1b" not in plain.getvalue()
    tty = io.StringIO()
    t = verify.ProgressPrinter(tty, tty=True)
    t.next_at = 0.0
    t(5, 10, 1 << 20)
    t.close()
    assert tty.getvalue().startswith("\rverify: 5/10 files") and tty.getvalue().endswith("\r\x1b[K")


def test_unreadable_file(backup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = done_rows(backup)[0]["local_path"]
    real = verify.sha256_file

    def sha256_file(path: Path) -> tuple[int, str]:
        if str(path).endswith(victim):  # root reads any file: chmod 0 cannot show this
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(verify, "sha256_file", sha256_file)
    report = verify.verify(backup / "manifest.sqlite", backup / "backup", sample=None)
    [problem] = report.problems
    assert problem.kind == "unreadable" and problem.local_path == victim
    assert "Permission denied" in problem.detail and not report.passed
