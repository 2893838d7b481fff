"""The atomic download writer: a hidden 0600 temp file beside the final name, renamed into place
only when complete and durable, so a final path never holds a partial file (see :class:`AtomicWriter`).

It offloads its own blocking I/O to worker threads and turns ``OSError`` from the disk into
:class:`~syncer.errors.LocalIOError`, whose messages name the folder (ids only), never the file
name (file names are patient data).  The path rules it relies on live in :mod:`syncer.local.storage`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from syncer.local.batch import BatchCommitter, mark_retrieved
from syncer.local.names import MAX_NAME_BYTES
from syncer.local.partial import (  # noqa: F401 - re-exported: callers name them from the writer
    Encryptor,
    PositionalWrites,
    ResumeError,
    SizeMismatchError,
    segs_name,
    unlink_quietly,
)
from syncer.local.storage import (
    UnsafePathError,
    _disk_error,
    _fsync_dir,
    _write_all,
    temp_name,
)
from syncer.local.temp import HiddenTemp

log = logging.getLogger("syncer.writer")

WRITE_BUFFER_BYTES = 1 << 20  # one thread hop per MiB, not per network chunk


class _Abandoned(Exception):
    """A batched file whose writer was aborted (its download cancelled) before the batch got to it."""


class AtomicWriter(HiddenTemp, PositionalWrites):
    """One download's destination: a hidden 0600 temp file, renamed into place when complete.

    Usage::

        w = AtomicWriter(path, root=dest, expected_size=size, resume=True)
        offset = w.existing_bytes()          # send "Range: bytes=<offset>-" if > 0
        async with w:
            await w.open(offset if got_matching_206 else 0)
            async for chunk in body:
                await w.write(chunk)
            nbytes, sha256 = await w.commit()

    ``final_path`` is a path (absolute or from the working folder) that must lie below ``root``;
    missing folders between them are made 0700.  Each chunk is hashed (sha256) on arrival, on the
    loop, while it is still in the CPU's cache: hashing in the worker thread instead cost 1.2 s more
    CPU per GiB here and about a third of a big file's throughput (tests/perf/README.md).  Writes are
    buffered to 1 MiB and handed to a worker thread, which writes them while the loop receives the
    next MiB (one batch in flight at most, so the order holds): a slow disk never blocks the loop.  A file
    smaller than the buffer costs one thread hop (``commit``) once its folder is known, two the
    first time.

    ``resume`` decides what leaving the ``async with`` block by an exception (cancellation
    included) does: keep the bytes received so far, written and fsynced, for a later Range request
    (True), or remove them (False).  Leaving it normally without ``commit`` discards the temp;
    ``commit`` failing (size mismatch, disk error) always removes it.  ``existing_bytes`` does not
    depend on ``resume``.  Two writers must never share a final path at the same time; the caller
    (and the run lock) see to that.

    ``encryptor`` (encryption at rest): the received bytes go through it and only what it writes reaches
    the temp file.  The sha256 and size returned by ``commit`` stay those of the received bytes;
    ``stored_size``/``stored_sha256`` describe the file on disk.  An encrypted partial can never be
    resumed (the file key is wrapped for the recipients), so with an encryptor ``existing_bytes`` is 0 and
    nothing is kept for a Range request.
    """

    def __init__(
        self,
        final_path: Path,
        *,
        root: Path,
        expected_size: int | None,
        resume: bool = False,
        chunk_fsync: bool = False,
        sync_dir: bool = True,
        encryptor: Encryptor | Any = None,
        batch: BatchCommitter | None = None,
    ):
        self.encryptor: Encryptor | None = encryptor
        # The run's group commit: a file still wholly in memory at commit() joins its next batch.
        self.batch = batch
        self.final_path = Path(final_path)
        # False: the caller fsyncs the folder itself (see fsync_dirs), once for many files, before it
        # records any of them as done.
        self.sync_dir = sync_dir
        self.root = Path(root)
        self.expected_size = expected_size
        self.resume = resume
        self.chunk_fsync = chunk_fsync
        self.temp_path = self.final_path.with_name(temp_name(self.final_path.name))
        self._final = self.final_path  # resolved in open()
        self._temp = self.temp_path
        self._fd: int | None = None
        self._created = False  # the temp file exists (open() may leave that to the first write)
        self._hash = hashlib.sha256()
        # A small plain file headed for a group commit is hashed there, in the commit thread (off the
        # event loop, in parallel with it), not chunk by chunk on arrival: see syncer.local.batch.
        self._defer_hash = (batch is not None and encryptor is None and expected_size is not None
                            and expected_size < WRITE_BUFFER_BYTES)
        self._bytes = 0  # received, buffered or written
        self._buf: list[bytes] = []
        self._buf_len = 0
        self._pending: asyncio.Future[None] | None = None
        self._failed = False  # a write went wrong: what is on disk is no longer a clean prefix
        self._state = "new"  # new -> open -> (closing ->) committed | closed
        self._lock = threading.Lock()  # serialises the worker-thread steps of this writer
        self._positional = False  # opened by open_positional (syncer.pull.segments)

    # -- queries

    @functools.cached_property
    def segs_path(self) -> Path:  # type: ignore[override]
        """Where a segmented download (syncer.pull.segments) records which byte ranges of the temp are
        durable."""
        return self.final_path.with_name(segs_name(self.final_path.name))

    def existing_bytes(self) -> int:
        """Bytes in a temp file left by an interrupted run, worth a Range request; else 0.

        0 when there is no plain temp file (a link, a hard-linked file), or when it is not shorter
        than ``expected_size`` (nothing left to ask for: start over).  One ``lstat``.
        """
        if self.encryptor is not None:
            return 0  # an age stream cannot be continued without the file key: start over
        try:
            st = os.lstat(self.temp_path)
        except OSError:
            return 0
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return 0
        if self.expected_size is not None and st.st_size >= self.expected_size:
            return 0
        if os.path.lexists(self.segs_path):
            # Left by a segmented download: its bytes are not a prefix (it has holes), so a whole
            # download starts over (the create below removes both files).
            return 0
        return st.st_size

    @property
    def bytes_written(self) -> int:
        return self._bytes

    @property
    def stored_size(self) -> int:
        """Bytes of the file on disk (after commit): the ciphertext's with an encryptor."""
        return self.encryptor.stored_size if self.encryptor is not None else self._bytes

    @property
    def stored_sha256(self) -> str:
        return self.encryptor.stored_sha256 if self.encryptor is not None else self._hash.hexdigest()

    # -- steps

    async def open(self, offset: int = 0) -> None:
        """Start the temp file (0600, never through a link), or reopen it at ``offset`` to resume.

        At offset 0 in a folder this process has already checked, the file is created by the first
        write to disk (a batch or ``commit``) rather than here: one thread hop less per small file.
        """
        if self._state != "new":
            raise RuntimeError("AtomicWriter.open() called twice")
        name = self.final_path.name
        if name in ("", ".", "..") or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise UnsafePathError("a download's file name is not one path component of at most 255 bytes")
        if offset <= 0 and self._folder_ready():
            self._state = "open"
            return
        try:
            # At offset 0 only the folder is checked (and made) now: the file is created by its first
            # write, so that a small file can still join a group commit.
            await asyncio.to_thread(self._open_sync, offset, offset > 0)
        except OSError as exc:
            raise _disk_error(exc, "cannot create a download's temp file", self.final_path.parent) from exc
        self._state = "open"

    async def write(self, chunk: bytes) -> None:
        """Add ``chunk``; raise SizeMismatchError (temp removed) once more than expected arrives."""
        if self._state != "open":
            raise RuntimeError(f"AtomicWriter.write() on a writer that is {self._state}")
        if not chunk:
            return
        if not isinstance(chunk, bytes):
            chunk = bytes(chunk)  # a caller's reused buffer must not change under us
        self._bytes += len(chunk)
        if self.expected_size is not None and self._bytes > self.expected_size:
            await self.abort(keep_partial=False)
            raise SizeMismatchError(self.expected_size, self._bytes, over=True)
        if not self._defer_hash:
            self._hash.update(chunk)
        self._buf.append(chunk)
        self._buf_len += len(chunk)
        if self._buf_len >= WRITE_BUFFER_BYTES:
            await self._wait_pending()
            chunks, self._buf, self._buf_len = self._buf, [], 0
            self._pending = asyncio.get_running_loop().run_in_executor(None, self._flush_sync, chunks)
            # Its failure is raised by the next _wait_pending(); if that never comes (the download was
            # cancelled), asyncio must not report it later as 'exception was never retrieved'.
            self._pending.add_done_callback(mark_retrieved)

    @contextlib.contextmanager
    def _marks_failure(self) -> Iterator[None]:
        """Around a worker-thread step that writes or syncs the temp (under the writer's lock): a failure
        marks the writer failed (what is on disk is no longer a clean prefix: never kept, never resumed)."""
        try:
            yield
        except BaseException:
            self._failed = True
            raise

    def _flush_sync(self, chunks: list[bytes]) -> None:
        with self._lock, self._marks_failure():
            fd = self._fd_for_writing()
            if self.encryptor is not None:
                self.encryptor.write(fd, chunks)
            else:
                _write_all(fd, chunks)
            if self.chunk_fsync:
                os.fsync(fd)

    async def _wait_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                await asyncio.shield(pending)
            except OSError as exc:
                raise _disk_error(exc, "cannot write a download", self.final_path.parent) from exc

    async def commit(self) -> tuple[int, str]:
        """Check the size, write the rest, fsync, rename into place, fsync the folder.

        Returns ``(bytes, sha256 hex)``.  On any failure the temp is removed and nothing is at the
        final path that was not there before.  (Cancelled while the rename is under way, the file
        may be in place although ``commit`` raised: the caller records nothing, the next run
        downloads it again.)
        """
        if self._state != "open":
            raise RuntimeError(f"AtomicWriter.commit() on a writer that is {self._state}")
        try:
            await self._wait_pending()
            if self.expected_size is not None and self._bytes != self.expected_size:
                raise SizeMismatchError(self.expected_size, self._bytes)
            chunks, self._buf, self._buf_len = self._buf, [], 0
            try:
                if self.batch is not None and self._fd is None and not self._created and self.encryptor is None:
                    await self.batch.commit(self, chunks)  # a small file: written, synced, renamed with others
                else:
                    if self._defer_hash:
                        for chunk in chunks:
                            self._hash.update(chunk)
                    fut = asyncio.get_running_loop().run_in_executor(None, self._commit_sync, chunks)
                    fut.add_done_callback(mark_retrieved)
                    await asyncio.shield(fut)
            except OSError as exc:
                raise _disk_error(exc, "cannot finish a download", self.final_path.parent) from exc
        except BaseException:
            await self.abort(keep_partial=False)
            raise
        return self._bytes, self._hash.hexdigest()

    def _commit_sync(self, chunks: list[bytes]) -> None:
        with self._lock:
            with self._marks_failure():
                fd = self._fd_for_writing()
                if self.encryptor is not None:
                    self.encryptor.finish(fd, chunks)
                else:
                    _write_all(fd, chunks)
                os.fsync(fd)
            self._fd = None
            os.close(fd)
            os.replace(self._temp, self._final)
            self._state = "committed"
            if self.sync_dir:
                _fsync_dir(self._final.parent)

    # -- the steps of a group commit (syncer.local.batch), each in its thread under the writer's lock

    def batch_write(self, chunks: list[bytes]) -> None:
        with self._lock:
            if self._state != "open":
                raise _Abandoned()
            with self._marks_failure():
                # One piece: each hash update and each write lets go of the GIL, and taking it back
                # from a busy event loop is most of what a small file costs this thread.
                data = chunks if len(chunks) < 2 else [b"".join(chunks)]
                if self._defer_hash and data:
                    self._hash.update(data[0])
                _write_all(self._fd_for_writing(), data)

    def batch_fsync(self) -> None:
        with self._lock, self._marks_failure():
            if self._state != "open" or self._fd is None:
                return  # abandoned meanwhile: it will not be renamed, and must not fail the others
            os.fsync(self._fd)

    def batch_rename(self) -> None:
        with self._lock:
            if self._state != "open" or self._fd is None:
                raise _Abandoned()
            fd, self._fd = self._fd, None
            os.close(fd)
            os.replace(self._temp, self._final)
            self._state = "committed"

    @property
    def folder(self) -> Path:
        """The folder the file was renamed into (resolved): what :func:`fsync_dirs` must sync."""
        return self._final.parent

    async def abort(self, keep_partial: bool = False) -> None:
        """Close; remove the temp unless ``keep_partial`` (then it is completed, fsynced and kept
        for a later Range resume).  Never raises for disk trouble: it only logs.  A writer that was
        never opened created nothing and removes nothing (an earlier run's partial stays)."""
        if self._state == "new":
            self._state = "closed"
        if self._state in ("committed", "closed"):
            return
        self._state = "closing"
        pending, self._pending = self._pending, None
        chunks, self._buf, self._buf_len = self._buf, [], 0
        cancelled: asyncio.CancelledError | None = None
        if pending is not None:
            # The batch in flight must land before the rest, or the kept partial has a hole.
            try:
                await asyncio.shield(pending)
            except asyncio.CancelledError as exc:
                cancelled, keep_partial = exc, False
            except Exception:  # noqa: BLE001 - the flush marked the writer failed: nothing is kept
                pass
        # The worker step takes the writer's lock, so it runs after any step still in a thread,
        # and it runs to its end even if we are cancelled while waiting for it.
        fut = asyncio.get_running_loop().run_in_executor(None, self._abort_sync, chunks, keep_partial)
        if cancelled is not None:
            raise cancelled
        await asyncio.shield(fut)

    def _abort_sync(self, chunks: list[bytes], keep_partial: bool) -> None:
        with self._lock:
            if self._state in ("committed", "closed"):
                return  # a second abort (after a cancellation) must not undo the first
            self._state = "closed"
            keep = keep_partial and not self._failed and self.encryptor is None
            if self.encryptor is not None and not self.encryptor.abort():
                # Its thread still writes to the fd: leave the fd open (a leak) rather than let it
                # write into whatever file reuses the number.  The temp is removed below all the same.
                log.warning("%s", "an encrypting thread did not stop; its temp file descriptor is left open")
                self._fd = None
            try:
                if keep and chunks and not self._created:
                    self._open_sync(0)
                fd, self._fd = self._fd, None
                if fd is not None:
                    try:
                        if keep:
                            _write_all(fd, chunks)
                            os.fsync(fd)
                    finally:
                        os.close(fd)
            except OSError as exc:
                keep = False
                log.warning("%s", _disk_error(exc, "cannot keep a partial download", self._final.parent))
            if self._created and not keep:
                try:
                    os.unlink(self._temp)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("%s", _disk_error(exc, "cannot remove a partial download", self._final.parent))

    async def __aenter__(self) -> AtomicWriter:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.abort(keep_partial=self.resume and exc_type is not None)
