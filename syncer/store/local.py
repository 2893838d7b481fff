"""The folder sink: today's behaviour behind the Sink seam (see :mod:`syncer.store`).

Writers are :class:`~syncer.local.writer.AtomicWriter` (hidden 0600 temp, fsync, rename; the folder
is fsynced by the recorder before the file is recorded done).  Presence is a ``stat`` per finished file,
a hash of a complete file a killed run left at its final path, and one ``scandir`` per folder for the
partial temps worth a Range resume.
"""

from __future__ import annotations

import os
from pathlib import Path

from syncer.errors import LocalIOError
from syncer.local.batch import BatchCommitter
from syncer.local.storage import TEMP_SUFFIX, UnsafePathError, make_dirs, sha256_file
from syncer.local.writer import AtomicWriter, Encryptor


class LocalPresence:
    """What a folder already holds, asked by the planner (blocking calls: run off the event loop)."""

    def __init__(self, dest: Path):
        self.dest = Path(dest)

    def size(self, rel: str) -> int | None:
        """The size of the file at ``rel``, or None when there is none."""
        try:
            return os.stat(self.dest / rel).st_size
        except OSError:
            return None

    def adopt(self, rel: str, size: int | None) -> str | None:
        """The sha256 of a complete copy of the expected size at ``rel``, or None."""
        if size is None:
            return None
        try:
            if os.stat(self.dest / rel).st_size != size:
                return None
            got, digest = sha256_file(self.dest / rel)
        except (OSError, UnsafePathError):  # gone, or a link put in its place: not ours to adopt
            return None
        return digest if got == size else None

    def partials(self, folder: str) -> set[str]:
        """The names of the partial temps in ``folder`` (relative to dest)."""
        try:
            with os.scandir(self.dest / folder) as it:
                return {e.name for e in it if e.name.endswith(TEMP_SUFFIX)}
        except OSError:
            return set()


class LocalSink:
    """Backup files under a local folder."""

    kind = "folder"

    def __init__(self, dest: Path, *, durability: str = "syncfs"):
        self.dest = Path(dest)
        self.batch = BatchCommitter(durability)  # small files are committed in groups (syncer.local.batch)

    def __str__(self) -> str:
        return str(self.dest)

    async def prepare(self) -> None:
        """Make the folder and prove it writable (LocalIOError, fatal, otherwise).  Blocking: offloaded."""
        import asyncio

        await asyncio.to_thread(self._prepare_sync)

    def _prepare_sync(self) -> None:
        try:
            make_dirs(self.dest, self.dest)
            probe = self.dest / ".syncer-write-test"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600))
            probe.unlink()
        except OSError as exc:
            raise LocalIOError(f"cannot write to the destination {self.dest}: {exc.strerror or exc}") from exc

    async def presence(self, target: object) -> LocalPresence:
        return LocalPresence(self.dest)

    def writer(self, rel: str, *, expected_size: int | None, replace: bool = True,
               encryptor: Encryptor | None = None) -> AtomicWriter:
        """An atomic writer for ``rel`` (already checked to stay inside the folder lexically); with an
        ``encryptor`` (``syncer.crypto.stream.AgeEncryptor``) only its ciphertext reaches the disk."""
        return AtomicWriter(self.dest / rel, root=self.dest, expected_size=expected_size, sync_dir=False,
                            encryptor=encryptor, batch=self.batch)

    async def close(self) -> None:
        await self.batch.close()
