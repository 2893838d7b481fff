"""restore's reader of an encrypted backup: the streamed plaintext (files above HOLD_BYTES) announces its
length and never hands over its last piece unless the whole matched the manifest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import aiohttp
import pyrage
import pytest

from syncer.errors import ItemError
from syncer.restore.plan import BackupFile
from syncer.restore.reader import HOLD_BYTES, PIECE_BYTES, BackupFolder


def backed_up(tmp_path: Path, data: bytes) -> tuple[BackupFolder, BackupFile, list]:
    ident = pyrage.x25519.Identity.generate()
    (tmp_path / "user" / "u1" / "user_document").mkdir(parents=True)
    rel = "user/u1/user_document/scan.pdf.age"
    (tmp_path / rel).write_bytes(pyrage.encrypt(data, [ident.to_public()]))
    f = BackupFile("user", "u1", "f1", "user_document", "scan.pdf", len(data), hashlib.sha256(data).hexdigest(),
                   rel, "done", encrypted=True)
    return BackupFolder(tmp_path, [ident]), f, [ident]


async def drain(body) -> tuple[bytes, BaseException | None]:
    got = []
    try:
        async for piece in body._value:
            got.append(piece)
    except BaseException as exc:  # noqa: BLE001
        return b"".join(got), exc
    return b"".join(got), None


async def test_a_big_file_streams_with_its_length_and_its_plaintext(tmp_path: Path) -> None:
    data = os.urandom(HOLD_BYTES + 3 * PIECE_BYTES + 123)
    reader, f, _ = backed_up(tmp_path, data)
    plain = reader.open(f)
    assert plain.body is not None and plain.unchanged()
    body = plain.body("application/pdf")
    assert body.size == len(data)
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("file", body, filename="scan.pdf", content_type="application/pdf")
    assert form().size is not None  # a Content-Length, not a chunked upload
    got, err = await drain(plain.body("application/pdf"))
    assert err is None and got == data


async def test_a_copy_that_changes_after_the_check_never_hands_over_its_last_piece(tmp_path: Path) -> None:
    data = os.urandom(HOLD_BYTES + 2 * PIECE_BYTES)
    reader, f, idents = backed_up(tmp_path, data)
    plain = reader.open(f)  # checked: the manifest's sha256
    # Replaced after the check by a valid age file of other bytes, same size (the last byte differs).
    other = data[:-1] + bytes([data[-1] ^ 1])
    (tmp_path / f.local_path).write_bytes(pyrage.encrypt(other, [idents[0].to_public()]))
    got, err = await drain(plain.body("application/pdf"))
    assert isinstance(err, ItemError) and "nothing was sent" in str(err)
    assert len(got) < len(data)           # the request would be cut: the server cannot store it whole
    assert not plain.unchanged()


def test_small_files_are_held_checked_in_memory_and_a_wrong_digest_is_refused(tmp_path: Path) -> None:
    data = b"x" * 1000
    reader, f, _ = backed_up(tmp_path, data)
    plain = reader.open(f)
    assert plain.body is not None and plain.body("text/plain") == data
    bad = BackupFile(**{**f.__dict__, "sha256": "0" * 64})
    with pytest.raises(ItemError, match="file f1: its backed-up copy has changed"):
        reader.open(bad)
    with pytest.raises(ItemError, match="no --identity"):
        BackupFolder(tmp_path).open(f)
