"""The overlap lock: one run at a time per manifest.

``<manifest>.lock`` (0600) is locked with ``flock(LOCK_EX | LOCK_NB)`` on a descriptor kept open for
the whole run, so the kernel releases the lock the moment the holder exits, however it dies: a lock
is never stale.  The file's contents (``{"pid", "host", "since", "command"}``) only explain who holds
it; the lock is the ``flock``, not the file's existence.

The file is never unlinked.  Unlinking races: a second run may have opened the old inode just before
the unlink and then lock it, while a third creates and locks a new file under the same name, and
both would run.  Release truncates the contents and closes the descriptor, which unlocks; an empty
lock file left behind is harmless.  Do not delete it by hand while a run is going.

Caveats: a process forked from the holder (without exec) shares the lock until it exits too; on
NFS, Linux emulates ``flock`` with POSIX locks, which works across hosts but depends on the server.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from syncer.errors import LockHeldError

log = logging.getLogger("syncer.lock")

__all__ = ["LockHeldError", "RunLock", "lock_path_for"]


def lock_path_for(manifest_path: Path) -> Path:
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(manifest_path.name + ".lock")


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 64 * 1024, 0)
        holder = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def pid_alive(pid: object) -> bool | None:
    """True/False for a pid on this host; None when it cannot be told."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return None
    return True


def _holder_text(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder unknown (the lock file is empty: a run is just starting)"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('since', '?')}"


class RunLock:
    """``with RunLock(manifest_path): ...`` — or ``acquire()`` / ``release()``.

    ``acquire`` raises :class:`~syncer.errors.LockHeldError` (with ``.holder``, the holder's dict)
    at once if another run holds the lock; it never waits.
    """

    def __init__(self, manifest_path: Path, *, command: str | None = None):
        self.path = lock_path_for(manifest_path)
        if command is None:
            command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""
        self.command = command[:500]
        self._fd: int | None = None
        self.holder: dict[str, Any] = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"this RunLock already holds {self.path}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = _read_holder(fd)
                raise LockHeldError(
                    f"another syncer run holds the lock on {self.path}: {_holder_text(holder)}", holder
                ) from None
            os.fchmod(fd, 0o600)
            previous = _read_holder(fd)
            if previous:
                self._log_takeover(previous)
            me = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                "command": self.command,
            }
            data = (json.dumps(me) + "\n").encode("utf-8")
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except BaseException:
            os.close(fd)  # also drops the flock if we got it
            raise
        self._fd = fd
        self.holder = me

    def _log_takeover(self, previous: dict[str, Any]) -> None:
        # A release empties the file, so contents mean the previous run ended without releasing.
        same_host = previous.get("host") == socket.gethostname()
        alive = pid_alive(previous.get("pid")) if same_host else None
        state = {True: "still running but not holding it", False: "dead", None: "state unknown"}[alive]
        log.info(
            "taking over the lock on %s, left by %s (%s)", self.path, _holder_text(previous), state
        )

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # while still locked: nobody reads a half-cleared holder
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
