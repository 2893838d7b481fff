"""The run lock on a manifest: one run at a time, released by the kernel when the holder dies."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from syncer.errors import LockHeldError, SyncerError
from syncer.local.lock import RunLock, lock_path_for

REPO = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from pathlib import Path
from syncer.local.lock import RunLock
lock = RunLock(Path(sys.argv[1]), command="syncer pull --test")
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path):
    """A second process holding the lock on ``tmp_path/m.sqlite``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "m.sqlite")],
        stdout=subprocess.PIPE, env=env, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_second_process_is_refused_then_takes_over_after_sigkill(
    tmp_path: Path, holder: subprocess.Popen, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = tmp_path / "m.sqlite"
    with pytest.raises(LockHeldError) as info:
        RunLock(manifest).acquire()
    err = info.value
    assert isinstance(err, SyncerError)
    assert err.holder["pid"] == holder.pid
    assert err.holder["host"] == socket.gethostname()
    assert err.holder["command"] == "syncer pull --test"
    assert str(err).startswith(f"another syncer run holds the lock on {lock_path_for(manifest)}: ")
    assert f"pid {holder.pid} on host {socket.gethostname()} since {err.holder['since']}" in str(err)

    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)

    caplog.set_level(logging.INFO, logger="syncer.lock")
    with RunLock(manifest, command="syncer status") as lock:
        assert lock.held
        content = json.loads(lock_path_for(manifest).read_text())
        assert content["pid"] == os.getpid() and content["command"] == "syncer status"
    takeover = [r for r in caplog.records if r.name == "syncer.lock" and r.levelno == logging.INFO]
    assert takeover and f"pid {holder.pid}" in takeover[0].getMessage() and "dead" in takeover[0].getMessage()


def test_lock_file_contents_and_mode(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with RunLock(tmp_path / "m.sqlite", command="syncer pull") as lock:
            path = tmp_path / "m.sqlite.lock"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            content = json.loads(path.read_text())
            assert content == lock.holder
            assert set(content) == {"pid", "host", "since", "command"}
            assert content["pid"] == os.getpid()
            assert content["since"].endswith("Z")
            assert datetime.fromisoformat(content["since"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    finally:
        os.umask(old)
    assert path.exists() and path.read_text() == ""  # never unlinked, emptied on release


def test_same_process_second_lock_is_refused_until_release(tmp_path: Path) -> None:
    first = RunLock(tmp_path / "m.sqlite")
    first.acquire()
    try:
        with pytest.raises(LockHeldError) as info:
            RunLock(tmp_path / "m.sqlite").acquire()
        assert info.value.holder["pid"] == os.getpid()
        with pytest.raises(RuntimeError):
            first.acquire()
    finally:
        first.release()
    first.release()  # releasing twice is harmless
    with RunLock(tmp_path / "m.sqlite"):
        pass
    with RunLock(tmp_path / "other.sqlite"):  # another manifest, another lock
        with RunLock(tmp_path / "m.sqlite"):
            pass


def test_leftover_or_garbled_lock_file_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "m.sqlite.lock"
    path.write_text("not json at all")
    with RunLock(tmp_path / "m.sqlite"):
        pass
    path.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "since": "x"}))
    caplog.set_level(logging.INFO, logger="syncer.lock")
    with RunLock(tmp_path / "m.sqlite"):
        pass
    assert any("taking over" in r.getMessage() for r in caplog.records)


def test_held_error_without_a_holder_record_says_so(tmp_path: Path) -> None:
    import fcntl

    path = tmp_path / "m.sqlite.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # locked, nothing written yet
        with pytest.raises(LockHeldError, match="holder unknown"):
            RunLock(tmp_path / "m.sqlite").acquire()
    finally:
        os.close(fd)


def test_lock_refuses_a_symlinked_lock_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "m.sqlite.lock").symlink_to(victim)
    with pytest.raises(OSError):
        RunLock(tmp_path / "m.sqlite").acquire()
    assert victim.read_text() == "precious"
