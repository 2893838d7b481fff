"""Disk full and I/O errors: the run stops with exit 3 and a clear message, no corrupt file lands at a
final path, the manifest stays intact, and the next run, with space, completes.

Two ways in: a real tiny tmpfs (needs root and mount; skipped where the sandbox refuses it), which fills
up for real under the backup or under the manifest; and errors injected into the writer's system calls
(``os.writev``, ``os.fsync``, ``os.replace`` as seen by :mod:`syncer.local.storage` and :mod:`syncer.local.writer`),
which run everywhere.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import push
from reliability_util import (
    audit_pull,
    audit_push,
    build_push_source,
    check_final_paths,
    integrity_ok,
    pull_cfg,
    push_cfg,
    query,
    run_cli,
    run_pull,
    write_toml,
)

import syncer.local.storage as storage
import syncer.local.writer as writer
from syncer.cli import main as cli_main
from syncer.errors import LocalIOError
from syncer.fakeserver import FakeServer, Faults
from syncer.manifest import Manifest

# -- a real small file system ----------------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[tuple[Path, callable]]:
    """A tmpfs of 2 MiB at tmp_path/vol, and a function that grows it; skipped without mount rights."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    vol = tmp_path / "vol"
    vol.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(vol)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")

    def grow(size: str = "128m") -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(vol)], check=True)

    try:
        yield vol, grow
    finally:
        subprocess.run(["umount", "-l", str(vol)], capture_output=True)


def test_backup_volume_fills_up_exit_3_then_completes_with_space(tiny_fs) -> None:
    vol, grow = tiny_fs
    srv = FakeServer(seed=401, users=4, files_per_user=10, sizes=(40_000, 300_000))
    with srv.run_in_thread():
        assert sum(f["size"] for f in srv.files()) > 3 * 2**20  # more than the volume holds
        cfg = write_toml(vol, srv, concurrency=4)                 # backup and manifest on the small volume
        manifest, dest = vol / "manifest.sqlite", vol / "backup"
        res = run_cli(["pull", "-c", str(cfg)], cwd=vol, token=srv.api_key, timeout=60)
        assert res.returncode == 3, res.stdout + res.stderr
        assert "No space left on device [ENOSPC]" in res.stdout or "database or disk is full" in res.stdout, res.stdout
        assert "stopped:" in res.stdout
        assert not check_final_paths(srv, manifest, dest)     # nothing partial at a final path
        assert integrity_ok(manifest)
        states = dict(query(manifest, "SELECT state, count(*) FROM pull_items GROUP BY state"))
        # Listings go on while files download: how many targets were recorded before the disk filled
        # depends on timing; what was recorded is intact, and the rest is recorded by the next run.
        assert 0 < sum(states.values()) <= len(srv.files()) and states.get("done", 0) < len(srv.files())
        # The end of the run is recorded when the full disk leaves room for it; else the next run
        # marks it killed.  Either way it is never left looking like a run that is still going.
        assert query(manifest, "SELECT outcome FROM runs") in ([("fatal",)], [("running",)])
        grow()
        res = run_cli(["pull", "-c", str(cfg)], cwd=vol, token=srv.api_key, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        audit = audit_pull(srv, manifest, dest)
        assert audit.clean and not audit.temps, audit.summary()
        res = run_cli(["verify", "-c", str(cfg), "--all"], cwd=vol, token=None)
        assert res.returncode == 0, res.stdout
        assert [o for (o,) in query(manifest, "SELECT outcome FROM runs ORDER BY started")] in (
            ["fatal", "ok"], ["killed", "ok"])


@pytest.mark.parametrize("files", [150, 600], ids=["while-listing", "while-downloading"])
def test_manifest_volume_fills_up_exit_3_without_hanging(tiny_fs, tmp_path: Path, files: int) -> None:
    """The manifest's own disk fills: while the listing is recorded, or later, while the recorder
    writes outcomes.  Either way the run stops (it must not hang), says so, and the next run heals."""
    vol, grow = tiny_fs
    subprocess.run(["mount", "-o", "remount,size=" + ("400k" if files == 150 else "1000k"), str(vol)], check=True)
    srv = FakeServer(seed=402, users=files // 50, files_per_user=50, sizes=(10,))
    with srv.run_in_thread():
        cfg = write_toml(tmp_path, srv, concurrency=8, manifest="vol/manifest.sqlite")
        manifest = vol / "manifest.sqlite"
        filler = vol / "filler"
        if files == 600:  # leave room for the listing, not for every outcome
            filler.write_bytes(b"\0" * 64 * 1024)
        res = run_cli(["pull", "-c", str(cfg)], cwd=tmp_path, token=srv.api_key, timeout=60)
        assert res.returncode == 3, res.stdout + res.stderr
        out = res.stdout + res.stderr
        assert "cannot write the manifest" in out and "disk is full" in out, out
        assert not check_final_paths(srv, manifest, tmp_path / "backup")
        assert integrity_ok(manifest)
        grow()
        res = run_cli(["pull", "-c", str(cfg)], cwd=tmp_path, token=srv.api_key, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        audit = audit_pull(srv, manifest, tmp_path / "backup")
        assert audit.clean and not audit.temps, audit.summary()


# -- injected errors ---------------------------------------------------------------------------------------


class Breaker:
    """Make one system call, as :mod:`syncer.local.storage` and :mod:`syncer.local.writer` see it, fail with ``code``
    after ``after`` calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str, code: int, after: int) -> None:
        self.calls = 0
        self.failures = 0
        self.on = True
        real = getattr(os, name)

        def broken(*args, **kw):
            self.calls += 1
            if self.on and self.calls > after:
                self.failures += 1
                raise OSError(code, os.strerror(code))
            return real(*args, **kw)

        # storage and writer use ``os.<name>`` through their module global ``os``: swap that module for a
        # proxy, so SQLite, aiohttp and the test itself keep the real call.
        for module in (storage, writer):
            monkeypatch.setattr(module, "os", _OsProxy(name, broken))


class _OsProxy:
    """The ``os`` module with one function replaced."""

    def __init__(self, name: str, fn) -> None:
        setattr(self, name, fn)

    def __getattr__(self, attr: str):
        return getattr(os, attr)


@pytest.mark.parametrize(("call", "code", "words"), [
    ("writev", errno.ENOSPC, "No space left on device [ENOSPC]"),
    ("writev", errno.EIO, "Input/output error [EIO]"),
    ("fsync", errno.EIO, "Input/output error [EIO]"),
    ("replace", errno.ENOSPC, "No space left on device [ENOSPC]"),
])
async def test_injected_disk_error_is_fatal_exit_3_then_the_next_run_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, code: int, words: str) -> None:
    async with FakeServer(seed=403, users=3, files_per_user=12, sizes=(100, 5_000, 2_000_000)) as srv:
        cfg = pull_cfg(srv, tmp_path, concurrency=4)
        breaker = Breaker(monkeypatch, call, code, after=3)
        stats, exit_code = await run_pull(srv, cfg)
        assert breaker.failures >= 1
        assert exit_code == 3 and stats.outcome == "fatal"
        assert words in (stats.fatal_error or ""), stats.fatal_error
        assert stats.files_done < len(srv.files())
        assert not check_final_paths(srv, cfg.manifest.path, cfg.pull.dest)
        assert integrity_ok(cfg.manifest.path)
        breaker.on = False
        stats, exit_code = await run_pull(srv, cfg)
        assert exit_code == 0, stats
        audit = audit_pull(srv, cfg.manifest.path, cfg.pull.dest)
        assert audit.clean and not audit.temps, audit.summary()


def test_cli_says_disk_full_and_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = FakeServer(seed=404, users=2, files_per_user=5, sizes=(3_000,))
    with srv.run_in_thread():
        cfg = write_toml(tmp_path, srv, concurrency=2)
        Breaker(monkeypatch, "writev", errno.ENOSPC, after=0)
        res = CliRunner().invoke(cli_main, ["pull", "-c", str(cfg), "-q"], env={"VSEE_API_TOKEN": srv.api_key})
        assert res.exit_code == 3, res.output
        assert "stopped: cannot" in res.output and "No space left on device [ENOSPC]" in res.output
        # Nothing was recorded done, and the manifest still opens and says why the run stopped.
        m = Manifest.open(tmp_path / "manifest.sqlite", create=False, readonly=True)
        try:
            summary = m.summary()
        finally:
            m.close()
        assert summary["pull"]["states"].get("done") is None
        assert summary["runs"][0]["outcome"] == "fatal"


def test_an_unwritable_backup_volume_is_exit_3_with_the_reason(tmp_path: Path) -> None:
    """A read-only file system under the destination (root ignores permission bits, not EROFS)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    vol = tmp_path / "ro"
    vol.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(vol)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        srv = FakeServer(seed=405, users=1, files_per_user=2)
        with srv.run_in_thread():
            cfg = write_toml(tmp_path, srv, dest=f"ro/backup-{uuid.uuid4().hex[:6]}")
            res = run_cli(["pull", "-c", str(cfg)], cwd=tmp_path, token=srv.api_key)
            assert res.returncode in (2, 3), res.stdout + res.stderr
            assert "Read-only file system" in res.stdout + res.stderr
    finally:
        subprocess.run(["umount", "-l", str(vol)], capture_output=True)


async def test_manifest_write_failing_mid_run_stops_the_run_and_does_not_hang(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorder's batch write fails (disk full under the manifest) while downloads go on: every
    downloader must notice and stop, the listers must not wait forever on a full queue, and the run
    must end with exit 3 naming the manifest."""
    real_apply = Manifest.apply
    batches = {"n": 0}

    def apply_then_fail(self, updates, run_id):
        batches["n"] += 1
        if batches["n"] > 2:
            raise LocalIOError(f"cannot write the manifest {self.path}: database or disk is full")
        return real_apply(self, updates, run_id)

    async with FakeServer(seed=406, users=12, files_per_user=50, sizes=(10, 2_000),
                          faults=Faults(latency_ms=10)) as srv:
        cfg = pull_cfg(srv, tmp_path, concurrency=4)
        monkeypatch.setattr(Manifest, "apply", apply_then_fail)
        stats, code = await asyncio.wait_for(run_pull(srv, cfg), timeout=60)
        assert code == 3 and stats.outcome == "fatal"
        assert "database or disk is full" in (stats.fatal_error or "")
        assert stats.files_done < len(srv.files())
        assert not check_final_paths(srv, cfg.manifest.path, cfg.pull.dest)
        assert integrity_ok(cfg.manifest.path)
        monkeypatch.setattr(Manifest, "apply", real_apply)
        stats, code = await asyncio.wait_for(run_pull(srv, cfg), timeout=60)
        assert code == 0, stats
        audit = audit_pull(srv, cfg.manifest.path, cfg.pull.dest)
        assert audit.clean and not audit.temps, audit.summary()


@pytest.mark.parametrize("method", ["apply"])
async def test_push_manifest_write_failing_mid_run_is_exit_3_and_no_upload_is_repeated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """The manifest's disk fails while uploads go on: a batch of intents and records of uploads just
    stored (both go through ``apply``).  The run stops with exit 3; the next run, with
    the disk back, finds what was stored without a record, and every document exists exactly once."""
    real = getattr(Manifest, method)
    calls = {"n": 0}

    def fail_later(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] > 6:
            raise LocalIOError(f"cannot write the manifest {self.path}: database or disk is full")
        return real(self, *args, **kw)

    async def push_within_30s(cfg):
        return await asyncio.wait_for(push(srv, cfg), timeout=30)

    async with FakeServer(seed=407) as srv:
        expected = build_push_source(tmp_path, srv, 3, 15, seed=407)
        cfg = push_cfg(srv, tmp_path, concurrency=4)
        monkeypatch.setattr(Manifest, method, fail_later)
        stats, code = await push_within_30s(cfg)
        assert code == 3 and stats.outcome == "fatal", stats
        assert "database or disk is full" in (stats.fatal_error or "")
        first = audit_push(srv, expected)
        assert not first.duplicates and first.files < 45, first.summary()
        assert integrity_ok(cfg.manifest.path)
        monkeypatch.setattr(Manifest, method, real)
        uploads = srv.counters["upload"]
        stats, code = await push_within_30s(cfg)
        assert code == 0, stats
        audit = audit_push(srv, expected)
        assert audit.clean and audit.files == 45, audit.summary()
        assert srv.counters["upload"] - uploads == 45 - first.files  # nothing stored was sent again


async def test_a_failed_write_batch_after_a_cancel_is_not_reported_as_unretrieved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopping (a fatal error elsewhere, a second signal) cancels a download whose 1 MiB batch is
    still being written in a thread; the batch then fails (ENOSPC).  The temp file is removed (checked),
    but the failure must not surface later as an asyncio 'exception was never retrieved' error."""
    import gc
    import time as time_mod

    def slow_enospc(fd, bufs):
        time_mod.sleep(0.2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage, "os", _OsProxy("writev", slow_enospc))
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    atomic = writer.AtomicWriter(tmp_path / "f.bin", root=tmp_path, expected_size=10 * 2**20, resume=True)

    async def download() -> None:
        async with atomic:
            await atomic.open(0)
            for _ in range(3):
                await atomic.write(b"x" * (2**20 + 1))

    task = asyncio.create_task(download())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.4)
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert not os.listdir(tmp_path), "the temp file was left behind"
    assert not [c for c in reported if "never retrieved" in c.get("message", "")], reported
