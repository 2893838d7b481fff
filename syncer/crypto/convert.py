"""``pull --reencrypt``: turn a plain backed-up file into an age file beside it, from the local copy
(no download), checking on the way that the plaintext is the one the manifest recorded.

The age file is written like a download (hidden 0600 temp, fsync, rename); the caller records it and
only then removes the plain file.  A local copy that is missing or differs from the recorded digest
raises :class:`LocalCopyChanged`: the caller downloads the file again instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from syncer.crypto.stream import encrypt_file
from syncer.errors import ItemError
from syncer.local.storage import _fsync_dir, ensure_inside, make_dirs, temp_name


class LocalCopyChanged(ItemError):
    """The plain local copy is gone or is not the file the manifest recorded."""


def convert_plain(dest: Path, plain_rel: str, age_rel: str, recipients: Sequence[Any], *, size: int | None,
                  sha256: str) -> tuple[int, str, int, str, Path]:
    """Encrypt ``dest/plain_rel`` to ``dest/age_rel``.  Returns ``(plain size, plain sha256, stored size,
    stored sha256, folder)``; the plain file is left in place (the caller removes it once recorded)."""
    src = ensure_inside(dest, plain_rel)
    final = ensure_inside(dest, age_rel)
    make_dirs(final.parent, dest)
    temp = final.with_name(temp_name(final.name))
    create = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temp, create, 0o600)
    except FileExistsError:
        os.unlink(temp)
        fd = os.open(temp, create, 0o600)
    ok = False
    try:
        try:
            got_size, got_sha, stored_size, stored_sha = encrypt_file(src, fd, recipients)
        except FileNotFoundError:
            raise LocalCopyChanged("the plain local copy is gone") from None
        if got_sha != sha256 or (size is not None and got_size != size):
            raise LocalCopyChanged("the plain local copy differs from the recorded SHA-256")
        os.fsync(fd)
        ok = True
    finally:
        os.close(fd)
        if not ok:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
    os.replace(temp, final)  # the recorder fsyncs the folder before it records the file (as for a download)
    return got_size, got_sha, stored_size, stored_sha, final.parent


def remove_old(dest: Path, rel: str) -> None:
    """Remove the file a moved one replaced (plain before encryption, or the reverse), and a partial
    temp of it an interrupted run may have left (plaintext, when it was a plain download); gone is fine."""
    try:
        path = ensure_inside(dest, rel)
    except FileNotFoundError:
        return
    removed = False
    for victim in (path, path.with_name(temp_name(path.name))):
        try:
            os.unlink(victim)
            removed = True
        except FileNotFoundError:
            pass
    if removed:
        _fsync_dir(path.parent)
