"""Group commit of small downloads: many files made durable by one thread and a few syscalls.

A file whose whole body is still in memory when it is complete (below the writer's 1 MiB buffer) is not
committed by a thread hop of its own: :meth:`AtomicWriter.commit` hands it to the run's
:class:`BatchCommitter`, which takes every file queued meanwhile and, in one worker thread:

1. creates each hidden temp (0600, exclusively, never through a link) and writes its bytes;
2. makes the bytes of all of them durable at once: one ``syncfs(2)`` of the file system where that is as
   good as an fsync of each file (Linux 5.8 and later, which report write-back errors through syncfs, on a
   local file system of ``SYNCFS_TYPES``; the descriptor is opened before the writes, so that no error of
   theirs can precede it), else one ``fsync(2)`` per file;
3. renames each temp to its final name.

Only then do the writers' commits return; the recorder fsyncs each folder once (making the renames
durable) before it records any of these files as done, as for every download.  So the guarantee is the
one of a file committed alone: a final name only ever holds complete, durable bytes, and "done" is only
recorded for a file whose bytes and name are on disk.  A crash at any step leaves hidden temps at most
(the next run removes or resumes them).

Per file this saves two thread hops and, with ``syncfs``, its own journal commit: on the 2-core VM of
tests/perf, 2,000 files of 40 KB went from 1.24 to 0.76 ms of client CPU a file (README, "Small files").
One file's own failure (its folder gone, a refused name) fails that file alone; a failed sync fails the
batch (the files are retried; an I/O error stops the run, as a disk error always does).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

log = logging.getLogger("syncer.writer")

MAX_BATCH = 256  # files a batch takes at most (bounded latency for the first of them)


class BatchFile(Protocol):
    """What a batch needs of a file (``AtomicWriter``): each step runs in the commit thread under the
    file's own lock, and raises for that file alone."""

    @property
    def folder(self) -> Path: ...

    def batch_write(self, chunks: list[bytes]) -> None:
        """Create the temp (hashing ``chunks`` if the writer has not) and write ``chunks`` to it."""

    def batch_fsync(self) -> None:
        """fsync the temp (when no syncfs covers it)."""

    def batch_rename(self) -> None:
        """Close the temp and rename it to the final name."""


def _kernel_reports_syncfs_errors() -> bool:
    """syncfs(2) returns write-back errors only since Linux 5.8; before, it returned 0 regardless."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


# File systems whose syncfs(2) writes and waits for everything fsync(2) would (a journal commit or its
# equivalent).  Not FUSE (no FUSE_SYNCFS but for virtiofs), SMB/CIFS (no sync_fs: no SMB FLUSH), NFS,
# overlayfs (errors of its upper layer were lost before 5.10) or anything unknown: their files are
# fsynced one by one.
SYNCFS_TYPES = frozenset({"ext4", "xfs", "btrfs", "f2fs", "tmpfs"})
MOUNTINFO = "/proc/self/mountinfo"


def mount_types(text: str) -> dict[int, str]:
    """Each mount's device number (as ``st_dev``) -> its file system type, from ``/proc/self/mountinfo``
    text (``id parent major:minor root mount-point options [optional...] - fstype source super-options``).
    A device mounted twice keeps its first type."""
    out: dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split()
        try:
            major, minor = (int(x) for x in fields[2].split(":"))
            fstype = fields[fields.index("-", 6) + 1]
        except (IndexError, ValueError):
            continue
        out.setdefault(os.makedev(major, minor), fstype)
    return out


class _SyncFs:
    """``syncfs(fd)`` through libc (ctypes releases the GIL for the call), where it is trustworthy."""

    def __init__(self) -> None:
        self._fn = None
        if _kernel_reports_syncfs_errors():
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.syncfs
                fn.argtypes = [ctypes.c_int]
                fn.restype = ctypes.c_int
                self._fn = fn
            except (OSError, AttributeError):
                self._fn = None

    @property
    def available(self) -> bool:
        return self._fn is not None

    def __call__(self, fd: int) -> None:
        assert self._fn is not None
        if self._fn(fd) != 0:
            code = ctypes.get_errno()
            if code == errno.ENOSYS:
                self._fn = None  # a kernel (or seccomp filter) without it: fsync each file from now on
                raise NotImplementedError
            raise OSError(code, os.strerror(code))


def mark_retrieved(fut: asyncio.Future[object] | Future[object]) -> None:
    """A done-callback for a future whose outcome nobody may read any more (its awaiter was cancelled):
    asyncio must not report its failure later as 'exception was never retrieved'."""
    if not fut.cancelled():
        fut.exception()


class BatchCommitter:
    """The run's group commit for small files; ``close()`` it when the run ends.

    ``mode``: ``"syncfs"`` (one ``syncfs`` a batch where the kernel reports errors through it, else an
    ``fsync`` per file) or ``"fsync"`` (always an ``fsync`` per file: for a file system shared with busy
    writers, whose dirty data a ``syncfs`` would have to write too).  One batch is in the thread at a
    time; files queued meanwhile form the next (no timer: a lone file is committed at once)."""

    def __init__(self, mode: str = "syncfs") -> None:
        if mode not in ("syncfs", "fsync"):
            raise ValueError(f"unknown durability mode {mode!r}")
        self._syncfs = _SyncFs() if mode == "syncfs" else None
        self._queue: list[tuple[BatchFile, list[bytes], asyncio.Future[None]]] = []
        self._busy = False
        self._idle: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._devices: dict[str, int] = {}  # folder -> its file system (st_dev)
        self._types: dict[int, str] | None = None  # st_dev -> file system type, read once
        self.batches = 0
        self.files = 0

    @property
    def uses_syncfs(self) -> bool:
        return self._syncfs is not None and self._syncfs.available

    async def commit(self, file: BatchFile, chunks: list[bytes]) -> None:
        """Write ``chunks`` (the whole file) to ``file``'s temp, make it durable and rename it, with
        whatever else is queued.  Raises the file's own ``OSError``, or the batch's sync failure."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fut.add_done_callback(mark_retrieved)  # a cancelled caller no longer reads its file's outcome
        self._queue.append((file, chunks, fut))
        self._start(loop)
        # Shielded: once queued, the thread may already be writing it.  A caller cancelled meanwhile
        # aborts its writer, which takes the writer's lock (as each step here does) and removes the temp;
        # the steps not yet done then skip the file.
        await asyncio.shield(fut)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._busy or not self._queue:
            return
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        # Not a task awaiting the thread: nothing can cancel a batch half way; its outcome always
        # reaches its files, through the loop.
        done = self._executor.submit(self._commit_sync, [(f, c) for f, c, _ in batch])
        self._busy = True
        if self._idle is not None:
            self._idle.clear()

        def report(d: Future[list[BaseException | None]]) -> None:
            try:
                loop.call_soon_threadsafe(self._finished, loop, batch, d)
            except RuntimeError:  # the loop is closed (the run was torn down): nobody waits any more
                self._busy = False

        done.add_done_callback(report)

    def _finished(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[BatchFile, list[bytes],
                  asyncio.Future[None]]], done: Future[list[BaseException | None]]) -> None:
        self._busy = False
        self.batches += 1
        self.files += len(batch)
        try:
            errors = done.result()
        except BaseException as exc:  # noqa: BLE001 - handed to every file of the batch
            errors = [exc] * len(batch)
        for (_, _, fut), err in zip(batch, errors, strict=True):
            if fut.done():
                continue
            if err is None:
                fut.set_result(None)
            else:
                fut.set_exception(err)
        self._start(loop)
        if not self._busy and self._idle is not None:
            self._idle.set()

    def _commit_sync(self, batch: list[tuple[BatchFile, list[bytes]]]) -> list[BaseException | None]:
        errors: list[BaseException | None] = [None] * len(batch)
        # Before any byte is written: syncfs reports the write-back errors of its file system that
        # happened since the descriptor it is given was opened, so a descriptor opened after the
        # writes could miss an error of this very batch's pages (written back early, under memory
        # pressure, and failed).  Opened first, it sees every one of them.
        devices = self._open_devices([f for f, _ in batch]) if self.uses_syncfs else {}
        try:
            written: list[int] = []
            for i, (f, chunks) in enumerate(batch):
                try:
                    f.batch_write(chunks)
                    written.append(i)
                except BaseException as exc:  # noqa: BLE001 - this file's own failure
                    errors[i] = exc
            if not written:
                return errors
            try:
                self._sync([batch[i][0] for i in written], devices)
            except BaseException as exc:  # noqa: BLE001 - the bytes of every file written are in doubt
                for i in written:
                    errors[i] = exc
                return errors
        finally:
            for fd in devices.values():
                os.close(fd)
        for i in written:
            try:
                batch[i][0].batch_rename()
            except BaseException as exc:  # noqa: BLE001 - this file's own failure
                errors[i] = exc
        return errors

    def _device(self, f: BatchFile) -> int | None:
        """The file system (st_dev) of ``f``'s folder (a mount below the destination is its own), or
        None when the folder cannot be looked at (its file then fails on its own, or is fsynced)."""
        folder = str(f.folder)
        dev = self._devices.get(folder)
        if dev is None:
            try:
                dev = self._devices[folder] = os.stat(folder).st_dev
            except OSError:
                return None
        return dev

    def _trusted(self, dev: int) -> bool:
        """Whether a syncfs of this file system is as good as an fsync of each file (``SYNCFS_TYPES``)."""
        if self._types is None:
            try:
                with open(MOUNTINFO, encoding="utf-8", errors="replace") as f:
                    self._types = mount_types(f.read())
            except OSError:
                self._types = {}
        return self._types.get(dev) in SYNCFS_TYPES

    def _open_devices(self, files: list[BatchFile]) -> dict[int, int]:
        """A descriptor on a folder of each file system the batch writes to, for its syncfs (only those
        whose syncfs can be trusted: the others' files are fsynced one by one)."""
        fds: dict[int, int] = {}
        for f in files:
            dev = self._device(f)
            if dev is None or dev in fds or not self._trusted(dev):
                continue
            try:
                fds[dev] = os.open(str(f.folder), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue  # that file system's files are fsynced one by one
        return fds

    def _sync(self, files: list[BatchFile], devices: dict[int, int]) -> None:
        """Make the written files durable: one syncfs for each file system (through the descriptors
        opened before the writes), an fsync for a file outside them (or for all, without syncfs)."""
        alone = files
        if devices and self._syncfs is not None:
            try:
                for fd in devices.values():
                    self._syncfs(fd)
                alone = [f for f in files if self._device(f) not in devices]
            except NotImplementedError:
                log.info("%s", "syncfs is not available here; small files are fsynced one by one")
        for f in alone:
            f.batch_fsync()

    async def close(self) -> None:
        """Wait for the batch in the thread and what is queued, then stop the thread."""
        if self._busy:  # (nothing is ever queued while the thread is idle: _start takes it at once)
            self._idle = self._idle or asyncio.Event()
            await self._idle.wait()
        if self.files:
            log.debug("group commit: %d files in %d batches (%s)", self.files, self.batches,
                      "syncfs" if self.uses_syncfs else "fsync each")
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
