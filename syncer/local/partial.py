"""What a download in progress leaves beside its final name, and the writes a segmented download makes.

- the errors about a download's bytes (``SizeMismatchError``, ``ResumeError``);
- ``Encryptor``: what a writer hands the received bytes to when the backup is encrypted;
- ``segs_name``: the segment record's name beside the hidden temp (``syncer.pull.segments`` writes it);
- ``PositionalWrites``: open, write at any offset, read back, fsync and commit a temp that several
  segments fill at once; a mixin of :class:`syncer.local.writer.AtomicWriter` (it uses its lock, its
  descriptor and its open/commit/abort steps).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
import threading
from pathlib import Path
from typing import Any, Protocol

from syncer.errors import IntegrityError, ItemError
from syncer.local.names import MAX_NAME_BYTES
from syncer.local.storage import _disk_error, ensure_inside, make_dirs, temp_name


class SizeMismatchError(IntegrityError, ValueError):
    """The bytes received differ from the size the server announced."""

    def __init__(self, expected: int, actual: int, *, over: bool = False):
        what = "more than" if over else f"{actual} bytes, not"
        super().__init__(f"download size mismatch: received {what} the {expected} bytes announced")
        self.expected, self.actual = expected, actual


class ResumeError(ItemError, ValueError):
    """The partial file left by an earlier run cannot be resumed at that offset: start over at 0."""


class Received:
    """The bytes a sink writer has been given and not yet handed on: counted against the size the listing
    announced, hashed in order (the manifest's witness of the plaintext) and held in ``chunks``."""

    def __init__(self, expected_size: int | None) -> None:
        self.expected_size = expected_size
        self.count = 0                   # every byte given so far
        self.chunks: list[bytes] = []    # held, not yet handed on
        self.held = 0                    # their length
        self._hash = hashlib.sha256()

    def add(self, chunk: bytes) -> None:
        """Take ``chunk``; SizeMismatchError (nothing taken) when it goes past the announced size."""
        if self.expected_size is not None and self.count + len(chunk) > self.expected_size:
            raise SizeMismatchError(self.expected_size, self.count + len(chunk), over=True)
        self.count += len(chunk)
        self._hash.update(chunk)
        self.chunks.append(chunk)
        self.held += len(chunk)

    def take(self) -> bytes:
        """Everything held, joined; nothing is held after."""
        data = b"".join(self.chunks)
        self.clear()
        return data

    def clear(self) -> None:
        self.chunks, self.held = [], 0

    def check_complete(self) -> None:
        if self.expected_size is not None and self.count != self.expected_size:
            raise SizeMismatchError(self.expected_size, self.count)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def segs_name(final_name: str) -> str:
    """The segment record's name beside the temp: ``.<name>.syncer-part.segs``, at most 255 bytes."""
    name = temp_name(final_name) + ".segs"
    if len(name.encode("utf-8", "surrogatepass")) + len(".new") > MAX_NAME_BYTES:  # room for its next version
        digest = hashlib.sha256(final_name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        name = f".{digest}.syncer-part.segs"
    return name


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Encryptor(Protocol):
    """What turns the received bytes into the stored bytes (``syncer.crypto.stream.AgeEncryptor``).

    Called in the writer's worker steps, under its lock: ``write`` for a full batch, ``finish`` at
    commit with the rest (before the fsync), ``abort`` when the download is abandoned."""

    stored_size: int

    @property
    def stored_sha256(self) -> str: ...

    def write(self, fd: int, chunks: list[bytes]) -> None: ...

    def finish(self, fd: int, chunks: list[bytes]) -> None: ...

    def abort(self) -> bool: ...


class PositionalWrites:
    """Writes at any offset into the writer's one temp file (a segmented download)."""

    root: Path
    final_path: Path
    temp_path: Path
    segs_path: Path
    expected_size: int | None
    _state: str
    _positional: bool
    _fd: int | None
    _created: bool
    _final: Path
    _temp: Path
    _lock: threading.Lock
    _failed: bool
    _bytes: int

    def _open_sync(self, offset: int) -> None:  # provided by AtomicWriter
        raise NotImplementedError

    def _commit_sync(self, chunks: list[bytes]) -> None:  # provided by AtomicWriter
        raise NotImplementedError

    async def abort(self, keep_partial: bool = False) -> Any:  # provided by AtomicWriter
        raise NotImplementedError


    async def open_positional(self, *, resume: bool) -> bool:
        """Open the temp for writes at any offset (``pwrite_sync``): the existing one when ``resume``
        and it is a plain file of ours (returns True), else a new empty one (False).  The segment record
        beside it (``segs_path``) is the caller's; a new temp removes a stale one."""
        if self._state != "new":
            raise RuntimeError("AtomicWriter.open_positional() on a writer that was opened")
        self._positional = True
        try:
            resumed = await asyncio.to_thread(self._open_positional_sync, resume)
        except OSError as exc:
            raise _disk_error(exc, "cannot create a download's temp file", self.final_path.parent) from exc
        self._state = "open"
        return resumed

    def _open_positional_sync(self, resume: bool) -> bool:
        if resume:
            final = os.path.abspath(self.final_path)
            folder = ensure_inside(self.root, final).parent
            make_dirs(folder, self.root)
            self._final = folder / os.path.basename(final)
            self._temp = folder / self.temp_path.name
            try:
                fd = os.open(self._temp, os.O_NOFOLLOW | os.O_CLOEXEC | os.O_RDWR)
            except FileNotFoundError:
                fd = None
            if fd is not None:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    os.fchmod(fd, 0o600)
                    self._fd, self._created = fd, True
                    return True
                os.close(fd)
        self._open_sync(0)
        unlink_quietly(self._temp.with_name(self.segs_path.name))
        return False

    def temp_stat(self) -> os.stat_result:
        """The open temp's ``fstat``: a segment record names the file it describes (device, inode)."""
        with self._lock:
            assert self._fd is not None
            return os.fstat(self._fd)

    @property
    def resolved_segs_path(self) -> Path:
        return self._temp.with_name(self.segs_path.name)

    def pwrite_sync(self, offset: int, chunks: list[bytes]) -> None:
        """Write ``chunks`` at ``offset`` (blocking: call it from a worker thread).  Under the writer's
        lock, so no write can reach a descriptor that ``abort`` or ``commit`` closed (and reused)."""
        with self._lock:
            if self._fd is None or self._state != "open":
                raise OSError(errno.EBADF, "the download's temp file is closed")
            self._pwrite_locked(self._fd, offset, chunks)

    def _pwrite_locked(self, fd: int, offset: int, chunks: list[bytes]) -> None:
        try:
            views = [memoryview(c) for c in chunks if c]
            while views:
                n = os.pwritev(fd, views, offset)
                offset += n
                while views and n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                if n:
                    views[0] = views[0][n:]
        except BaseException:
            self._failed = True
            raise

    def pread_sync(self, offset: int, view: memoryview) -> int:
        with self._lock:
            if self._fd is None:
                return 0
            return os.preadv(self._fd, [view], offset)

    def fsync_sync(self) -> None:
        # On a duplicate, outside the lock: the other threads' writes go on while the disk syncs.
        with self._lock:
            if self._fd is None:
                raise OSError(errno.EBADF, "the download's temp file is closed")
            fd = os.dup(self._fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def set_size_sync(self, size: int) -> None:
        """Make the temp exactly ``size`` bytes of zeros (sparse): a new segmented download."""
        with self._lock:
            assert self._fd is not None
            os.ftruncate(self._fd, 0)
            os.ftruncate(self._fd, size)

    @property
    def failed(self) -> bool:
        """A write went wrong: what is on disk cannot be trusted."""
        return self._failed

    async def commit_positional(self, nbytes: int) -> None:
        """fsync and rename a temp written by ``pwrite_sync`` (all ``nbytes`` of it) into place."""
        if self._state != "open":
            raise RuntimeError(f"AtomicWriter.commit_positional() on a writer that is {self._state}")
        try:
            if self.expected_size is not None and nbytes != self.expected_size:
                raise SizeMismatchError(self.expected_size, nbytes)
            self._bytes = nbytes
            try:
                await asyncio.to_thread(self._commit_sync, [])
            except OSError as exc:
                raise _disk_error(exc, "cannot finish a download", self.final_path.parent) from exc
        except BaseException:
            await self.abort(keep_partial=False)
            raise
