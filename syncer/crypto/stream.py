"""Streams through age: the encryptor behind the atomic writer, the encryption of a plain file
already on disk (``pull --reencrypt``), and the decrypting reader (``verify --decrypt``, restore).

pyrage's ``encrypt_io``/``decrypt_io`` are blocking and pull from a file-like reader, so each big
stream gets one thread running pyrage, fed by a bounded queue (at most ``QUEUE_BATCHES`` batches of
about 1 MiB in flight: memory stays flat for any file size).  A file that fits the writer's first
batch (1 MiB) is encrypted in one call (``pyrage.encrypt``) on the writer's commit hop instead: no
thread, no queue, which keeps thousands of small files as fast as plain ones.  Either way the only
bytes that reach the disk are pyrage's output.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from syncer.errors import IntegrityError
from syncer.local.storage import _write_all, open_nofollow

QUEUE_BATCHES = 2             # batches (the writer's, about 1 MiB each) waiting for the pyrage thread
WRITE_BATCH = 1 << 20         # ciphertext gathered into one writev
_EOF: list[bytes] = []        # the end of the plaintext (an empty batch)
_ABORT = None
DECRYPT_CHUNK = 1 << 16


class DecryptFailed(IntegrityError):
    """The file is not a complete, authentic age file for these identities (truncated, altered)."""


class NoMatchingKey(DecryptFailed):
    """None of the identities opens the file: the wrong key, or a header altered or re-encrypted."""


class _Aborted(Exception):
    pass


class _QueueReader:
    """A file-like reader for pyrage whose ``read`` blocks on the queue the writer fills.  An item is a
    whole batch (a list of chunks): one hand-over per MiB, not per network chunk."""

    def __init__(self, q: queue.Queue[list[bytes] | None]):
        self._q = q
        self._buf = memoryview(b"")
        self._pending: list[bytes] = []
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        while not self._buf and not self._eof:
            if self._pending:
                self._buf = memoryview(self._pending.pop())
                continue
            item = self._q.get()
            if item is _ABORT:
                raise _Aborted("the download was abandoned")
            if not item:
                self._eof = True
            else:
                self._pending = item[::-1]  # popped from the end: in order
        if n is None or n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return bytes(out)

    def readable(self) -> bool:
        return True


class _HashingFdWriter:
    """pyrage's output (64 KiB pieces): hashed and counted (the stored object's sha256, which ``verify``
    checks without a key), gathered and written to the temp file's descriptor a MiB at a time;
    ``drain`` writes the rest."""

    def __init__(self, fd: int, enc: AgeEncryptor):
        self.fd, self.enc = fd, enc
        self._out: list[bytes] = []
        self._out_len = 0

    def write(self, data: bytes) -> int:
        data = bytes(data)
        self.enc._hash.update(data)
        self.enc.stored_size += len(data)
        self._out.append(data)
        self._out_len += len(data)
        if self._out_len >= WRITE_BATCH:
            self.drain()
        return len(data)

    def drain(self) -> None:
        out, self._out, self._out_len = self._out, [], 0
        if out:
            try:
                _write_all(self.fd, out)
            except OSError as exc:
                self.enc._error = exc  # re-raised as itself (a disk error), not as pyrage's EncryptError
                raise

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True


class AgeEncryptor:
    """The :class:`~syncer.local.writer.AtomicWriter`'s encryptor: it receives the plaintext
    batches in the writer's worker steps (under the writer's lock) and writes only ciphertext.

    ``write(fd, chunks)`` for a full batch (starts the pyrage thread on first use), ``finish(fd,
    chunks)`` at commit (the rest, then the end of the stream), ``abort()`` when the download is
    abandoned.  ``stored_size`` and ``stored_sha256`` describe the ciphertext written.
    """

    def __init__(self, recipients: Sequence[Any]):
        if not recipients:
            raise ValueError("an encryptor needs at least one recipient")
        self.recipients = list(recipients)
        self.stored_size = 0
        self._hash = hashlib.sha256()
        self._q: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=QUEUE_BATCHES)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def stored_sha256(self) -> str:
        return self._hash.hexdigest()

    def _run(self, fd: int) -> None:
        import pyrage

        try:
            out = _HashingFdWriter(fd, self)
            pyrage.encrypt_io(_QueueReader(self._q), out, self.recipients)
            out.drain()
        except BaseException as exc:  # noqa: BLE001 - handed to the writer's next step
            if self._error is None:
                self._error = exc
            # Drain, so a producer blocked on a full queue wakes up and sees the error.
            while True:
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    break

    def _put(self, item: list[bytes] | None) -> None:
        while True:
            if self._error is not None:
                self._raise()
            try:
                self._q.put(item, timeout=0.5)
                return
            except queue.Full:
                if self._thread is not None and not self._thread.is_alive():
                    self._raise()

    def _raise(self) -> None:
        err = self._error
        if isinstance(err, OSError):
            raise err
        raise OSError(f"encryption failed: {err}") from err

    def write(self, fd: int, chunks: list[bytes]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(fd,), name="age-encrypt", daemon=True)
            self._thread.start()
        if chunks:
            self._put(list(chunks))

    def finish(self, fd: int, chunks: list[bytes]) -> None:
        if self._thread is None:
            # The whole file is in this one batch: one call, no thread (see the module docstring).
            import pyrage

            ciphertext = pyrage.encrypt(b"".join(chunks), self.recipients)
            _write_all(fd, [ciphertext])
            self._hash.update(ciphertext)
            self.stored_size += len(ciphertext)
            return
        self.write(fd, chunks)
        self._put(_EOF)
        self._thread.join()
        if self._error is not None:
            self._raise()

    def abort(self) -> bool:
        """Stop the pyrage thread; False if it is still running (stuck in a write to a hung disk): then
        the caller must not close the descriptor it writes to, or a reused number could receive it."""
        if self._thread is None or not self._thread.is_alive():
            return True
        try:
            self._q.put(_ABORT, timeout=5)
        except queue.Full:
            pass
        self._thread.join(timeout=5)
        return not self._thread.is_alive()


def encrypt_file(src: Path, dst_fd: int, recipients: Sequence[Any]) -> tuple[int, str, int, str]:
    """Encrypt the plain file ``src`` (opened without following links) into ``dst_fd``.

    Returns ``(plain size, plain sha256, stored size, stored sha256)``: the caller checks the plain
    digest against the manifest before it trusts the result."""
    import pyrage

    sink = AgeEncryptor(recipients)
    plain = hashlib.sha256()
    size = 0
    fd = open_nofollow(src)
    try:
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
            class _HashingReader:
                def read(self, n: int = -1) -> bytes:
                    nonlocal size
                    data = f.read(n if n and n > 0 else 1 << 20) or b""
                    plain.update(data)
                    size += len(data)
                    return data

            out = _HashingFdWriter(dst_fd, sink)
            try:
                pyrage.encrypt_io(_HashingReader(), out, list(recipients))
                out.drain()
            except pyrage.EncryptError as exc:
                if isinstance(sink._error, OSError):
                    raise sink._error from exc
                raise OSError(f"encryption failed: {exc}") from exc
    finally:
        os.close(fd)
    return size, plain.hexdigest(), sink.stored_size, sink.stored_sha256


def open_plaintext(path: str | os.PathLike | Any, identities: Sequence[Any]) -> Iterator[bytes]:
    """The plaintext of the age file at ``path`` (or read from ``path.read(n)``, a file-like such as a
    bucket object's stream), in chunks, decrypted on the fly in a thread.

    Raises :class:`NoMatchingKey` when no identity opens it, :class:`DecryptFailed` when it is not an
    authentic, complete age file (a flipped byte or a truncation: age authenticates every 64 KiB),
    ``OSError`` when it cannot be read.  A chunk is only yielded once pyrage has authenticated it;
    still, a consumer must treat everything it received as void if the iterator raises later on.
    Stopping early (closing the generator) stops the thread."""
    import pyrage

    q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=4)
    stop = threading.Event()
    read_error: list[OSError] = []

    class _Reader:
        def __init__(self, f: Any):
            self.f = f

        def read(self, n: int = -1) -> bytes:
            try:
                return self.f.read(n if n and n > 0 else DECRYPT_CHUNK) or b""
            except OSError as exc:
                read_error.append(exc)
                raise

    class _Writer:
        def write(self, data: bytes) -> int:
            if stop.is_set():
                raise _Aborted("the reader stopped")
            q.put(bytes(data))
            return len(data)

        def flush(self) -> None:
            pass

    def run(f: Any) -> None:
        try:
            pyrage.decrypt_io(_Reader(f), _Writer(), list(identities))
        except pyrage.DecryptError as exc:
            msg = str(exc)
            q.put(NoMatchingKey("none of the identities opens it (another key, or its header was altered)")
                  if "no matching keys" in msg.lower() else DecryptFailed(f"not a valid age file: {msg}"))
        except BaseException as exc:  # noqa: BLE001 - pyrage reports a failed authentication as OSError
            if read_error:
                q.put(read_error[0])
            elif stop.is_set():
                q.put(None)
            else:
                q.put(DecryptFailed(f"it does not decrypt (altered or truncated): {exc}"))
        else:
            q.put(None)

    if hasattr(path, "read"):
        f = path
    else:
        fd = open_nofollow(Path(path))
        f = os.fdopen(fd, "rb", buffering=DECRYPT_CHUNK)
    thread = threading.Thread(target=run, args=(f,), name="age-decrypt", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
        if hasattr(f, "close"):
            f.close()


def decrypt_sha256(path: str | os.PathLike, identities: Sequence[Any]) -> tuple[int, str]:
    """``(plain size, plain sha256)`` of the age file at ``path`` (see :func:`open_plaintext`)."""
    h = hashlib.sha256()
    n = 0
    for chunk in open_plaintext(path, identities):
        h.update(chunk)
        n += len(chunk)
    return n, h.hexdigest()


def probe_identities(sources: Iterable[Callable[[], Any]], identities: Sequence[Any]) -> tuple[int, int]:
    """``(tried, opened)``: of the age files ``source()`` gives (a path or a file-like), how many could be
    tried (missing or damaged ones are not counted: the run reports those) and how many the identities
    open (the header and the first chunk authenticate; the rest is not read)."""
    tried = opened = 0
    for source in sources:
        try:
            chunks = open_plaintext(source(), identities)
            try:
                next(chunks, None)
            finally:
                chunks.close()
        except NoMatchingKey:
            tried += 1
            continue
        except Exception:  # noqa: BLE001 - missing, damaged, an unusable path: the run reports it per file
            continue
        tried += 1
        opened += 1
    return tried, opened
