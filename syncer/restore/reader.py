"""The backup's bytes for one backed-up file, checked before anything is sent.

The seam where decryption plugs in: a reader turns a backed-up row into a :class:`Plaintext` (a
regular file of the original bytes, already checked against the manifest's size and sha256) and
releases it after the upload.  :class:`PlainBackup` reads a plain backup folder in place; an encrypted
backup's reader (``--identity``) would decrypt into a private temporary file and delete it on
``close``, with the same checks.  Blocking: call these in a thread.

Messages name the file id, never the file's name or local path (patient data).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from syncer.errors import ItemError
from syncer.local.storage import ensure_inside, sha256_file
from syncer.push.plan import file_ident
from syncer.restore.plan import BackupFile


@dataclass
class Plaintext:
    """A backed-up file's original bytes, ready to send: ``path`` holds exactly what the manifest hashed."""

    path: Path
    ident: tuple[int, ...]
    cleanup: Callable[[], None] | None = None

    def unchanged(self) -> bool:
        """Whether the file still is the one that was checked (size, mtime, ctime, inode, device)."""
        try:
            return file_ident(os.lstat(self.path)) == self.ident
        except OSError:
            return False

    def close(self) -> None:
        if self.cleanup is not None:
            self.cleanup()


class BackupReader(Protocol):
    def open(self, f: BackupFile) -> Plaintext: ...


class PlainBackup:
    """A plain (unencrypted) backup folder: ``<dest>/<local_path>`` as pull wrote it."""

    def __init__(self, dest: Path):
        self.dest = Path(dest)

    def open(self, f: BackupFile) -> Plaintext:
        """The backed-up copy, hashed and compared with the manifest; ItemError when it is missing,
        unreadable or changed (then nothing may be sent for it)."""
        try:
            path = ensure_inside(self.dest, f.local_path)
            before = os.lstat(path)
            size, digest = sha256_file(path)
            after = os.lstat(path)
        except FileNotFoundError:
            raise ItemError(f"file {f.file_id}: its backed-up copy is missing from the backup folder;"
                            " nothing was sent") from None
        except ItemError:  # a path that would leave the backup folder, a symlink (its text names the path)
            raise ItemError(f"file {f.file_id}: its backed-up copy is not a regular file inside the backup folder;"
                            " nothing was sent") from None
        except OSError as exc:
            raise ItemError(f"file {f.file_id}: cannot read its backed-up copy ({exc.strerror or exc});"
                            " nothing was sent") from None
        if size != f.size or digest != f.sha256 or file_ident(before) != file_ident(after):
            raise ItemError(f"file {f.file_id}: its backed-up copy has changed since the backup (size or sha256"
                            " differ from the manifest's); nothing was sent")
        return Plaintext(path, file_ident(after))
