"""A segmented download's state (:mod:`syncer.pull.segments`): its pieces, their record on disk
(``.<name>.syncer-part.segs``) and the whole file's sha256, computed in order.

The record is JSON: ``{"v": 1, "file": id, "size": n, "dev": d, "ino": i, "pieces": [[start, end,
written], ...]}``, the pieces contiguous from 0 to the size.  It names the temp it describes (device,
inode), so a record beside another file is never believed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncer.errors import ProtocolError
from syncer.local.writer import AtomicWriter

READ_BYTES = 512 * 1024         # read-back for the hash, in pieces of this size
RECORD_MAX = 64 * 1024


@dataclass
class Piece:
    start: int
    end: int        # exclusive
    written: int    # bytes start..written are on disk (not yet durable unless a record says so)
    busy: bool = False


class InOrderHash:
    """The whole file's sha256, in order, while pieces land anywhere (see the module docstring)."""

    def __init__(self, writer: AtomicWriter, size: int, in_order: bool) -> None:
        self.sha = hashlib.sha256()
        self.pos = 0
        # Bytes 0..frontier are written: set on the loop (``_SegmentedFile._written``) after each write
        # completes, read here; one int, so a thread never walks a list the loop is changing.
        self.frontier = 0
        self._writer, self._size, self._in_order = writer, size, in_order
        self._lock = threading.Lock()
        self._buf = bytearray(READ_BYTES)

    def after_write(self, offset: int, chunks: list[bytes]) -> None:
        """In the thread that just wrote ``chunks`` at ``offset``: extend the hashed prefix."""
        if not self._in_order or not self._lock.acquire(blocking=False):
            return  # another thread is hashing; it, a later write or ``finish`` picks this up
        try:
            if offset == self.pos:
                for c in chunks:
                    self.sha.update(c)
                    self.pos += len(c)
            self._catch_up(self.frontier)
        finally:
            self._lock.release()

    def finish(self) -> str:
        with self._lock:
            self._catch_up(self._size)
            if self.pos != self._size:
                raise ProtocolError("the file's bytes could not all be read back for its checksum")
            return self.sha.hexdigest()

    def _catch_up(self, upto: int) -> None:
        view = memoryview(self._buf)
        while self.pos < upto:
            n = self._writer.pread_sync(self.pos, view[: min(len(view), upto - self.pos)])
            if n <= 0:
                return
            self.sha.update(view[:n])
            self.pos += n


def record_body(file_id: str, size: int, dev: int, ino: int, snapshot: list[tuple[int, int, int]]) -> bytes:
    return json.dumps({"v": 1, "file": file_id, "size": size, "dev": dev, "ino": ino, "pieces": snapshot},
                      separators=(",", ":")).encode()


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, RECORD_MAX + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        rec = json.loads(data) if len(data) <= RECORD_MAX else None
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def pieces_from(rec: dict[str, Any], file_id: str, size: int, ident: tuple[int, int]) -> list[Piece] | None:
    """The pieces a record describes, when it is ours, for this file, of this temp; else None."""
    if (rec.get("v"), rec.get("file"), rec.get("size"), rec.get("dev"), rec.get("ino")) != (1, file_id, size,
                                                                                            *ident):
        return None
    raw = rec.get("pieces")
    if not isinstance(raw, list) or not raw:
        return None
    pieces, at = [], 0
    for p in raw:
        if (not isinstance(p, list) or len(p) != 3 or not all(type(v) is int for v in p)
                or p[0] != at or not p[0] <= p[2] <= p[1] or p[1] <= p[0]):
            return None
        pieces.append(Piece(p[0], p[1], p[2]))
        at = p[1]
    return pieces if at == size else None
