"""EncryptingWriter: age around any sink writer (write/commit/abort).  Here around the folder sink's atomic
writer, a real one on disk: the file is valid age holding the plaintext, the sizes and digests returned
are right, and an abandoned or oversized stream leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyrage
import pytest

from syncer.crypto.sinkwriter import BATCH, EncryptingWriter
from syncer.local.writer import SizeMismatchError
from syncer.store.local import LocalSink

IDENT = pyrage.x25519.Identity.generate()


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def wrapped(tmp_path: Path, size: int | None) -> EncryptingWriter:
    inner = LocalSink(tmp_path).writer("user/u1/user_document/a.pdf.age", expected_size=None)
    return EncryptingWriter(inner, [IDENT.to_public()], expected_size=size)


@pytest.mark.parametrize("size", [0, 1000, BATCH - 1, BATCH + 1, 3 * BATCH + 12345])
async def test_any_size_round_trips_and_reports_both_digests(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    w = wrapped(tmp_path, size)
    await w.open(0)
    for i in range(0, size, 65536 - 7):  # network-sized chunks, not aligned with age's 64 KiB
        await w.write(data[i:i + 65536 - 7])
    assert await w.commit() == (size, hashlib.sha256(data).hexdigest())
    stored = (tmp_path / "user/u1/user_document/a.pdf.age").read_bytes()
    assert pyrage.decrypt(stored, [IDENT]) == data
    assert (w.stored_size, w.stored_sha256) == (len(stored), hashlib.sha256(stored).hexdigest())


async def test_abort_mid_stream_and_an_oversized_body_leave_nothing(tmp_path: Path) -> None:
    w = wrapped(tmp_path, 3 * BATCH)
    await w.open(0)
    await w.write(os.urandom(2 * BATCH))  # the pyrage thread is running
    await w.abort()
    assert files(tmp_path) == []
    w = wrapped(tmp_path, BATCH)
    await w.open(0)
    await w.write(os.urandom(BATCH))
    with pytest.raises(SizeMismatchError):
        await w.write(b"x")
    assert files(tmp_path) == []
