"""age between a download and any sink's writer: plaintext in, ciphertext to the sink.

:class:`EncryptingWriter` has the writer shape every sink hands out (``existing_bytes`` / ``open`` /
``write`` / ``commit`` / ``abort``, see :mod:`syncer.store`) and wraps one: what it receives is the
plaintext (counted, hashed, checked against the expected size), what the wrapped writer receives is
only pyrage's output.  ``commit`` returns the plaintext's ``(size, sha256)`` like any writer;
``stored_size`` / ``stored_sha256`` are then what the wrapped writer stored (the ciphertext's), which
verify checks without a key.

The folder sink keeps its own, measured, in-thread path (the atomic writer's ``encryptor``: the
ciphertext goes from pyrage's thread straight to the temp file's descriptor); :func:`writer_for` picks
it for a folder and this wrapper for every other sink (the object sink), so the pull asks one place.

How the stream runs: a file that fits one batch (``BATCH``) is encrypted in one call at commit (no
thread).  A bigger one gets a pyrage thread (``encrypt_io`` is blocking) reading from a queue; each
batch is handed over in a worker thread that waits until pyrage has consumed it (its reader asks for
more) and takes the ciphertext produced meanwhile, which is then written to the sink on the event
loop.  At most one batch of plaintext and about one of ciphertext are held per file.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Sequence
from typing import Any

from syncer.local.partial import Received, SizeMismatchError

BATCH = 1 << 20          # plaintext handed to pyrage at a time
_INLINE = 256 << 10      # a whole file this small is encrypted on the event loop (well under a millisecond)
_ABORT = object()


class _Stream:
    """One pyrage ``encrypt_io`` in its own thread, fed batch by batch (see the module docstring)."""

    def __init__(self, recipients: Sequence[Any]):
        self._in: queue.Queue[Any] = queue.Queue()
        self._hungry = threading.Event()     # pyrage has consumed everything handed over
        self._done = threading.Event()
        self._out: list[bytes] = []
        self._lock = threading.Lock()
        self._buf = memoryview(b"")
        self._eof = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(list(recipients),), name="age-encrypt-sink",
                                        daemon=True)
        self._thread.start()

    # pyrage's side (its thread) ----------------------------------------------------------------
    def read(self, n: int = -1) -> bytes:
        while not self._buf and not self._eof:
            self._hungry.set()
            item = self._in.get()
            if item is _ABORT:
                raise OSError("the download was abandoned")
            if item is None:
                self._eof = True
            else:
                self._buf = memoryview(item)
        if n is None or n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return bytes(out)

    def readable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        with self._lock:
            self._out.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def _run(self, recipients: list[Any]) -> None:
        import pyrage

        try:
            pyrage.encrypt_io(self, self, recipients)
        except BaseException as exc:  # noqa: BLE001 - reported to the feeding side
            self.error = exc
        finally:
            self._done.set()
            self._hungry.set()

    # the feeding side (a worker thread, never the event loop) -------------------------------------
    def _take(self) -> list[bytes]:
        with self._lock:
            out, self._out = self._out, []
        return out

    def feed(self, data: bytes | None) -> list[bytes]:
        """Hand over ``data`` (None: the end) and wait until pyrage has consumed it (the end: finished);
        the ciphertext produced meanwhile.  Blocking."""
        self._hungry.clear()
        self._in.put(data)
        (self._done if data is None else self._hungry).wait()
        if self.error is not None:
            raise OSError(f"encryption failed: {self.error}") from self.error
        if data is not None and self._done.is_set():
            raise OSError("encryption ended before the end of the file")
        return self._take()

    def stop(self) -> None:
        if not self._done.is_set():
            self._in.put(_ABORT)
            self._thread.join(timeout=5)


class EncryptingWriter:
    """A sink writer behind age (see the module docstring)."""

    def __init__(self, inner: Any, recipients: Sequence[Any], *, expected_size: int | None):
        if not recipients:
            raise ValueError("an encrypting writer needs at least one recipient")
        self.inner = inner
        self.recipients = list(recipients)
        self.expected_size = expected_size
        self._rx = Received(expected_size)
        self._stream: _Stream | None = None
        self.stored_size = 0
        self.stored_sha256 = ""

    @property
    def folder(self) -> Any:
        return self.inner.folder

    @property
    def bytes_written(self) -> int:
        return self._rx.count

    def existing_bytes(self) -> int:
        return 0  # an encrypted partial cannot be continued (its file key is wrapped for the recipients)

    async def open(self, offset: int = 0) -> None:
        if offset:
            raise ValueError("an encrypted file cannot be resumed")
        await self.inner.open(0)

    async def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        try:
            self._rx.add(bytes(chunk))
        except SizeMismatchError:
            await self.abort()
            raise
        if self._rx.held >= BATCH:
            await self._hand_over(self._rx.take())

    async def _hand_over(self, data: bytes | None) -> None:
        if self._stream is None:
            self._stream = _Stream(self.recipients)
        for piece in await asyncio.to_thread(self._stream.feed, data):
            await self.inner.write(piece)

    async def commit(self) -> tuple[int, str]:
        """Finish the age stream and the wrapped writer; ``(plaintext bytes, plaintext sha256)``."""
        try:
            self._rx.check_complete()
            if self._stream is None:
                import pyrage

                data = self._rx.take()
                if len(data) <= _INLINE:
                    ciphertext = pyrage.encrypt(data, self.recipients)
                else:
                    ciphertext = await asyncio.to_thread(pyrage.encrypt, data, self.recipients)
                del data
                await self.inner.write(ciphertext)
            else:
                if self._rx.held:
                    await self._hand_over(self._rx.take())
                await self._hand_over(None)
            self.stored_size, self.stored_sha256 = await self.inner.commit()
        except BaseException:
            await self.abort()
            raise
        return self._rx.count, self._rx.sha256

    async def abort(self, keep_partial: bool = False) -> None:
        """Drop everything: the pyrage thread stops, the wrapped writer aborts (no partial is kept)."""
        self._rx.clear()
        stream, self._stream = self._stream, None
        if stream is not None:
            await asyncio.to_thread(stream.stop)
        await self.inner.abort(keep_partial=False)


def writer_for(sink: Any, rel: str, *, expected_size: int | None, replace: bool = True,
               recipients: Sequence[Any] = (), owner: str | None = None) -> Any:
    """The writer a pull stores one file through: the sink's own, or with ``recipients`` an encrypting
    one (a folder: the atomic writer's in-thread encryptor; any other sink: :class:`EncryptingWriter`
    around the sink's writer, which never sees a plaintext byte).  ``owner``: the file id, for a sink
    that labels what it stores (an object's metadata)."""
    kwargs: dict[str, Any] = {"owner": owner} if getattr(sink, "labels_owner", False) else {}
    if not recipients:
        return sink.writer(rel, expected_size=expected_size, replace=replace, **kwargs)
    if getattr(sink, "kind", None) == "folder":
        from syncer.crypto.stream import AgeEncryptor

        return sink.writer(rel, expected_size=expected_size, replace=replace, encryptor=AgeEncryptor(recipients))
    inner = sink.writer(rel, expected_size=None, replace=replace, **kwargs)  # the ciphertext's size is age's
    return EncryptingWriter(inner, recipients, expected_size=expected_size)
