"""The hidden temp file of a download: its folder checked (and made) once, created exclusively, or reopened
to resume.  A mixin of :class:`~syncer.local.writer.AtomicWriter`; every method here blocks and runs in a
worker thread (or the group-commit thread, :mod:`syncer.local.batch`).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from syncer.local.partial import ResumeError, unlink_quietly
from syncer.local.storage import ensure_inside, make_dirs

READ_BACK_BYTES = 1 << 20  # hashing a kept prefix before a resume: one MiB a read

# Folders already checked and made, by (root, folder) as given: most files of a run share a
# handful of folders, and resolving a path costs a stat per component.  Entries are dropped when
# a folder turns out to be gone.  (The destination is 0700: only this user could swap a folder for a
# link meanwhile.)
_ready_folders: dict[tuple[str, str], Path] = {}
_READY_FOLDERS_MAX = 4096



class HiddenTemp:
    """Where ``AtomicWriter`` keeps its temp: ``_temp`` beside ``_final`` (both resolved once the folder
    is known), ``_fd`` once created."""

    final_path: Path
    root: Path
    temp_path: Path
    segs_path: Path
    _final: Path
    _temp: Path
    _fd: int | None
    _created: bool
    _positional: bool
    _bytes: int
    _hash: hashlib._Hash

    def _folder_ready(self) -> bool:
        final = os.path.abspath(self.final_path)
        folder = _ready_folders.get((os.path.abspath(self.root), os.path.dirname(final)))
        if folder is None:
            return False
        self._final = folder / os.path.basename(final)
        self._temp = folder / self.temp_path.name
        return True

    def _open_sync(self, offset: int, create: bool = True) -> None:
        final = os.path.abspath(self.final_path)
        key = (os.path.abspath(self.root), os.path.dirname(final))
        for attempt in (1, 2):
            folder = _ready_folders.get(key)
            if folder is None:
                folder = ensure_inside(self.root, final).parent
                make_dirs(folder, self.root)
                if len(_ready_folders) >= _READY_FOLDERS_MAX:
                    _ready_folders.clear()
                _ready_folders[key] = folder
            self._final = folder / os.path.basename(final)
            self._temp = folder / self.temp_path.name
            if not create:
                return
            try:
                self._create_sync(offset)
                return
            except FileNotFoundError:
                _ready_folders.pop(key, None)  # the folder went away under us: check and make it again
                if attempt == 2:
                    raise

    def _create_sync(self, offset: int) -> None:
        flags = os.O_NOFOLLOW | os.O_CLOEXEC
        if offset <= 0:
            # Create exclusively, never truncate: a stale temp could be a hard link to a file elsewhere,
            # and truncating it would clobber that file.  A stale one is unlinked and the create tried
            # once more.  (Not unlinking first when there is nothing to unlink: that takes the folder's
            # lock for nothing, and 32 downloaders creating files in one folder queued on it: 3 % of
            # all CPU in a profile of 2,000 small files.)
            # Read and write for a positional writer: it reads its bytes back for the checksum.
            create = flags | (os.O_RDWR if self._positional else os.O_WRONLY) | os.O_CREAT | os.O_EXCL
            try:
                fd = os.open(self._temp, create, 0o600)
            except FileExistsError:
                os.unlink(self._temp)
                segs = self._temp.with_name(self.segs_path.name)  # its segment record, if any
                unlink_quietly(segs)
                unlink_quietly(segs.with_name(segs.name + ".new"))
                fd = os.open(self._temp, create, 0o600)
        else:
            try:
                fd = os.open(self._temp, flags | os.O_RDWR)
            except FileNotFoundError as exc:
                raise ResumeError("the partial download to resume is gone") from exc
        try:
            os.fchmod(fd, 0o600)
            if offset > 0:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size < offset:
                    raise ResumeError(f"the partial download cannot be resumed at byte {offset}")
                os.ftruncate(fd, offset)
                self._hash_prefix(fd, offset)
                os.lseek(fd, offset, os.SEEK_SET)
                self._bytes = offset
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._created = fd, True

    def _fd_for_writing(self) -> int:
        """The open temp file, created now if ``open`` left that to the first write."""
        if self._fd is None:
            if self._created:
                raise RuntimeError("the writer was closed while a write was pending")
            self._open_sync(0)
        assert self._fd is not None
        return self._fd

    def _hash_prefix(self, fd: int, length: int) -> None:
        buf = bytearray(READ_BACK_BYTES)
        view = memoryview(buf)
        pos = 0
        while pos < length:
            n = os.preadv(fd, [view[: min(len(buf), length - pos)]], pos)
            if n == 0:
                raise ResumeError("the partial download shrank while being read")
            self._hash.update(view[:n])
            pos += n

