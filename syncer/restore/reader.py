"""The backup's bytes for one backed-up file, checked before anything is sent.

A reader turns a backed-up row into a :class:`Plaintext`: the original bytes, already checked against
the manifest's size and sha256, and how the upload gets them.  :class:`BackupFolder` reads a backup
folder in place: a plain file is hashed where it is and sent from there; an encrypted one (``.age``,
``--identity``) is decrypted through :func:`syncer.crypto.stream.open_plaintext` and its plaintext is
never written to disk.  :class:`BackupBucket` reads an ``s3://`` backup's objects through the store
(:mod:`syncer.store.reading`), plain or age, never to disk either.  Either way:

- up to ``HOLD_BYTES`` it is decrypted into memory, checked, and sent from there (at most
  ``push.concurrency`` such files are held at once);
- a bigger one is decrypted twice: once to check it (hashed, nothing kept), then again while it is
  sent, in pieces of ``PIECE_BYTES`` (memory stays flat).  The second pass is hashed too and its last
  piece held back until the digest matches: a copy that changed in between never arrives whole (the
  request is cut, the server stores nothing), and the upload reports the file changed.

Blocking: call ``open`` in a thread.  Messages name the file id, never the file's name or local path
(patient data).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from syncer.errors import ItemError, LocalPathError
from syncer.local.storage import ensure_inside, sha256_file
from syncer.push.plan import file_ident
from syncer.restore.plan import BackupFile

HOLD_BYTES = 4 << 20      # encrypted files up to this size are decrypted into memory, once
PIECE_BYTES = 1 << 20     # a streamed plaintext goes to the upload a MiB at a time
NOTHING_SENT = "nothing was sent"


@dataclass
class Plaintext:
    """A backed-up file's original bytes, ready to send.  ``path`` is the backed-up copy (for an encrypted
    file, the age file); ``body`` (None: send ``path`` as it is) gives the upload a fresh body per try."""

    path: Path
    ident: tuple[int, ...]
    body: Callable[[str], Any] | None = None
    torn: list[str] = field(default_factory=list)   # a streamed pass that did not match (see module doc)
    in_bucket: bool = False   # an object: each pass reads it only if its ETag is still the one checked

    def unchanged(self) -> bool:
        """Whether the copy still is the one that was checked (size, mtime, ctime, inode, device)."""
        if self.torn:
            return False
        if self.in_bucket:
            return True
        try:
            return file_ident(os.lstat(self.path)) == self.ident
        except OSError:
            return False


class BackupReader(Protocol):
    def open(self, f: BackupFile) -> Plaintext: ...


def _changed(f: BackupFile) -> ItemError:
    return ItemError(f"file {f.file_id}: its backed-up copy has changed since the backup (size or sha256"
                     f" differ from the manifest's); {NOTHING_SENT}")


class BackupFolder:
    """A backup folder as pull wrote it: ``<dest>/<local_path>``, plain or age files.  ``identities``
    (``--identity``) open the encrypted ones; without them an encrypted row fails (the options refuse
    such a restore before it starts)."""

    def __init__(self, dest: Path, identities: Sequence[Any] | None = None):
        self.dest = Path(dest)
        self.identities = list(identities or [])

    def open(self, f: BackupFile) -> Plaintext:
        """The checked plaintext; ItemError when the copy is missing, unreadable, changed, or (encrypted)
        opens with none of the identities or fails age's authentication: then nothing may be sent."""
        try:
            path = self.source(f.local_path)
            before = os.lstat(path)
            if f.encrypted:
                got = self._decrypted(path, f)
            else:
                size, digest = sha256_file(path)
                got = None
            after = os.lstat(path)
        except FileNotFoundError:
            raise ItemError(f"file {f.file_id}: its backed-up copy is missing from the backup folder;"
                            f" {NOTHING_SENT}") from None
        except LocalPathError:
            # a path that would leave the backup folder, a symlink (its text may name the path); the
            # reader's own ItemErrors (from _decrypted) pass through as they are
            raise ItemError(f"file {f.file_id}: its backed-up copy is not a regular file inside the backup folder;"
                            f" {NOTHING_SENT}") from None
        except OSError as exc:
            raise ItemError(f"file {f.file_id}: cannot read its backed-up copy ({exc.strerror or exc});"
                            f" {NOTHING_SENT}") from None
        if file_ident(before) != file_ident(after):
            raise _changed(f)
        if got is None:
            if size != f.size or digest != f.sha256:
                raise _changed(f)
            return Plaintext(path, file_ident(after))
        return got.finish(path, file_ident(after))

    def _decrypted(self, path: Path, f: BackupFile) -> _Checked:
        from syncer.crypto.stream import open_plaintext

        if not self.identities:
            raise ItemError(f"file {f.file_id}: its backed-up copy is encrypted and no --identity was given;"
                            f" {NOTHING_SENT}")
        return _check(f, lambda: open_plaintext(path, self.identities))

    def source(self, rel: str) -> Path:
        """Where the age file at ``rel`` is read from (for the identity probe)."""
        return ensure_inside(self.dest, rel)


def _check(f: BackupFile, chunks: Callable[[], Iterator[bytes]]) -> _Checked:
    """One pass over the plaintext ``chunks()`` gives: hashed and compared with the manifest, and kept
    when it is small enough to hold (else the upload makes a second pass)."""
    from syncer.crypto.stream import DecryptFailed, NoMatchingKey

    held: list[bytes] | None = [] if f.size <= HOLD_BYTES else None
    h = hashlib.sha256()
    n = 0
    try:
        for chunk in chunks():
            n += len(chunk)
            if n > f.size:
                raise _changed(f)
            h.update(chunk)
            if held is not None:
                held.append(chunk)
    except NoMatchingKey:
        raise ItemError(f"file {f.file_id}: none of the identities given opens its backed-up copy (another"
                        f" key?); {NOTHING_SENT}") from None
    except DecryptFailed:
        raise ItemError(f"file {f.file_id}: its backed-up copy fails age's authentication (altered or"
                        f" truncated); {NOTHING_SENT}") from None
    if n != f.size or h.hexdigest() != f.sha256:
        raise _changed(f)
    return _Checked(chunks, f, b"".join(held) if held is not None else None)


@dataclass
class _Checked:
    chunks: Callable[[], Iterator[bytes]]   # the plaintext again (a second pass), for a file not held
    f: BackupFile
    data: bytes | None          # held in memory; None: streamed on each try

    def finish(self, path: Path, ident: tuple[int, ...], in_bucket: bool = False) -> Plaintext:
        plain = Plaintext(path, ident, in_bucket=in_bucket)
        if self.data is not None:
            data = self.data
            plain.body = lambda ctype: data
        else:
            plain.body = lambda ctype: _sized_stream(_stream(self.chunks, self.f, plain.torn), self.f.size, ctype)
        return plain


async def _stream(source: Callable[[], Iterator[bytes]], f: BackupFile, torn: list[str]) -> AsyncIterator[bytes]:
    """The plaintext again, read (decrypted) while it is sent; the last piece only once the whole matched."""
    chunks = await asyncio.to_thread(source)

    def take() -> bytes:
        out: list[bytes] = []
        size = 0
        while size < PIECE_BYTES:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            out.append(chunk)
            size += len(chunk)
        return b"".join(out)

    h = hashlib.sha256()
    n = 0
    held: bytes | None = None
    try:
        while True:
            try:
                piece = await asyncio.to_thread(take)
            except Exception as exc:  # noqa: BLE001 - altered or unreadable since it was checked
                torn.append(type(exc).__name__)
                raise _changed(f) from None
            if not piece:
                break
            n += len(piece)
            h.update(piece)
            if held is not None:
                yield held
            held = piece
            if n > f.size:
                break
        if n != f.size or h.hexdigest() != f.sha256:
            torn.append("digest")
            raise _changed(f)
        if held is not None:
            yield held
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await asyncio.to_thread(close)


def _sized_stream(chunks: AsyncIterator[bytes], size: int, ctype: str) -> Any:
    """An aiohttp payload of ``chunks`` that announces its size (a Content-Length, not chunked)."""
    from aiohttp.payload import AsyncIterablePayload

    payload = AsyncIterablePayload(chunks, content_type=ctype)
    payload._size = size  # aiohttp has no public way to give an iterable's length
    return payload


class BackupBucket:
    """A backup in an S3-compatible bucket (``s3://``), read through the object sink's store: objects are
    never written to disk.  Plain and age objects alike are checked in one pass (held in memory up to
    ``HOLD_BYTES``, else read again while sent, and only if the object's ETag is still the one checked)."""

    def __init__(self, sink: Any, identities: Sequence[Any] | None = None):
        self.sink = sink
        self.identities = list(identities or [])

    def source(self, rel: str) -> Any:
        from syncer.store.reading import ObjectReader

        return ObjectReader(self.sink, rel)

    def open(self, f: BackupFile) -> Plaintext:
        import obstore.exceptions as oe

        from syncer.store.reading import ObjectReader
        from syncer.store.s3 import translate

        first = ObjectReader(self.sink, f.local_path)
        try:
            if f.encrypted:
                if not self.identities:
                    raise ItemError(f"file {f.file_id}: its backed-up copy is encrypted and no --identity was given;"
                                    f" {NOTHING_SENT}")
                from syncer.crypto.stream import open_plaintext

                checked = _check(f, lambda: open_plaintext(first, self.identities))
                again = lambda: open_plaintext(ObjectReader(self.sink, f.local_path, first.etag),  # noqa: E731
                                               self.identities)
            else:
                checked = _check(f, first.chunks)
                again = ObjectReader(self.sink, f.local_path, first.etag).chunks
        except (oe.NotFoundError, FileNotFoundError):
            raise ItemError(f"file {f.file_id}: its backed-up object is missing from the bucket; {NOTHING_SENT}"
                            ) from None
        except ItemError:
            raise
        except Exception as exc:  # noqa: BLE001 - the store's failure, translated (no key or URL in it)
            raise translate(exc, f"file {f.file_id}: reading its backed-up object") from exc
        checked.chunks = again
        return checked.finish(Path(f.local_path), (), in_bucket=True)


def open_reader(dest: Path | str, identities: Sequence[Any] = (),
                backup_config: Any = None) -> BackupFolder | BackupBucket:
    """The reader for a backup: its folder, or its bucket (``s3://``, with the backup config's s3 settings)."""
    from syncer.store import is_object_dest

    if is_object_dest(dest):
        from syncer.store.s3 import ObjectSink

        return BackupBucket(ObjectSink.from_config(str(dest), backup_config), identities)
    return BackupFolder(Path(dest), identities)
