"""Local files: safe paths for hostile remote names, private modes, durable small writes.

Layout of a pull: ``<dest>/<target_type>/<target_id>/<category>/<safe name>``.  Every remote name goes
through :func:`safe_name`; every path we write is checked with :func:`ensure_inside`; folders are
0700 and files 0600 whatever the umask.  A download lands in a hidden temp file beside its final
name and is renamed into place only when complete and durable (:mod:`syncer.local.writer`), so a final
path never holds a partial file.

Blocking calls here are either tiny (a stat) or made to be run off the event loop: callers offload
:func:`sha256_file`, :func:`iter_regular_files` and :func:`write_private_text`.

Error messages name folders (ids only), never the file name of a download: file names are patient
data.  The blocking helpers let ``OSError`` through for their callers to judge.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shlex
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from syncer.errors import ConfigError, LocalIOError, LocalPathError
from syncer.local.names import (  # noqa: F401 - re-exported
    MAX_EXT_BYTES,
    MAX_NAME_BYTES,
    casefold_key,
    disambiguate,
    safe_name,
)

TEMP_SUFFIX = ".syncer-part"
_IOV_MAX = 1024


class UnsafePathError(LocalPathError, ValueError):
    """A path would land outside its root, or is not the plain file it should be."""


class LoosePermissionsError(ConfigError, PermissionError):
    """A secret file is readable or writable by group or others."""


# The name rules live in syncer.local.names; re-exported here for callers that think of paths.


def temp_name(final_name: str) -> str:
    """The hidden temp name beside ``final_name``; at most 255 bytes."""
    name = f".{final_name}{TEMP_SUFFIX}"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        digest = hashlib.sha256(final_name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        name = f".{digest}{TEMP_SUFFIX}"
    return name


# ---------------------------------------------------------------------------------------------- paths


def _resolve_within(root: Path | str, rel: str | Path) -> tuple[Path, Path]:
    """(real root, resolved root/rel); the last component stays unresolved (a link is not followed)."""
    real_root = Path(os.path.realpath(root))
    full = Path(os.path.abspath(Path(real_root, rel)))
    if full.name:
        full = Path(os.path.realpath(full.parent), full.name)
    if full != real_root and real_root not in full.parents:
        raise UnsafePathError(f"a path would leave {real_root} (through '..' or a symbolic link)")
    return real_root, full


def ensure_inside(root: Path, rel: str | Path) -> Path:
    """``root / rel`` with symlinks of existing parents resolved; raise UnsafePathError unless it is
    strictly below ``root``.  ``rel`` may also be absolute (then it must point below ``root``).
    The last component is not resolved: a symlink there is replaced by an atomic rename, never
    followed, and readers use :func:`open_nofollow`.  The message never holds ``rel`` (a file name
    is patient data)."""
    real_root, full = _resolve_within(root, rel)
    if full == real_root:
        raise UnsafePathError(f"a path is {real_root} itself, not a file inside it")
    return full


def _mkdir_private(path: Path) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return  # made by someone else (another downloader): not ours to chmod
    os.chmod(path, 0o700)  # the umask may have taken bits away; never added any, but be exact
    # The new folder's name durable in its parent: the recorder fsyncs only the folder a file is renamed
    # into, and without this a crash could lose the folder (and every file in it) after they are recorded
    # done.  Once per folder made.
    _fsync_dir(Path(path).parent)


def make_dirs(path: Path, root: Path) -> None:
    """Create every missing folder of ``root`` and of ``path`` below it, each with mode 0700 exactly.

    Folders that already exist keep their mode.  Raise UnsafePathError if ``path`` is not ``root``
    or below it (after resolving symlinks).
    """
    missing: list[Path] = []
    top = Path(os.path.abspath(root))
    while not os.path.isdir(top):
        missing.append(top)
        top = top.parent
    for folder in reversed(missing):
        _mkdir_private(folder)
    real_root, full = _resolve_within(root, os.path.abspath(path))
    if os.path.isdir(full):
        return
    current = real_root
    for part in full.relative_to(real_root).parts:
        current = current / part
        _mkdir_private(current)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dirs(folders: Iterable[str | Path]) -> None:
    """fsync each folder once: makes the renames into them durable.  Blocking; OSError becomes
    LocalIOError (the caller must not record a file as done whose folder could not be synced)."""
    for folder in folders:
        try:
            _fsync_dir(Path(folder))
        except OSError as exc:
            raise _disk_error(exc, "cannot sync a folder", Path(folder)) from exc


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """Write every chunk with ``writev`` (no joining copy), coping with short writes."""
    views = [memoryview(c) for c in chunks if c]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i : i + _IOV_MAX])
        while n:
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


def _disk_error(exc: OSError, what: str, folder: Path) -> LocalIOError:
    code = errno.errorcode.get(exc.errno or 0, "?")
    return LocalIOError(f"{what} in {folder}: {exc.strerror or exc} [{code}]", errno=exc.errno)


# ------------------------------------------------------------------------------------- other files


def open_nofollow(path: Path) -> int:
    """Open a regular file read-only, refusing a symlink (UnsafePathError) or a FIFO/device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            # No path in the message: it holds a file's name (patient data), and messages are logged.
            raise UnsafePathError("the file is a symbolic link (never followed)") from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError("the file is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def sha256_file(path: Path, chunk: int = 1 << 20) -> tuple[int, str]:
    """(size, sha256 hex) of a regular file, read without following a final symlink.  Blocking."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    size = 0
    with open(open_nofollow(path), "rb", buffering=0, closefd=True) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return size, h.hexdigest()


def write_private_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text`` (UTF-8), mode 0600, durable on return.  Blocking."""
    write_private_bytes(path, text.encode("utf-8"))


def write_private_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600, durable on return.  Blocking."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".syncer-tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        _write_all(fd, [data])
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def check_private_file(path: Path) -> None:
    """Raise LoosePermissionsError if group or others have any access to ``path`` (like ssh)."""
    mode = os.stat(path).st_mode
    if mode & 0o077:
        raise LoosePermissionsError(
            f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"it holds secrets, so syncer refuses it. Fix it with: chmod 600 {shlex.quote(str(path))}"
        )


def iter_regular_files(
    root: Path, on_skip: Callable[[Path, str], None] | None = None
) -> Iterator[tuple[Path, os.stat_result]]:
    """Walk ``root`` depth-first in name order, yielding ``(path, lstat)`` of regular files.

    Skipped, and reported through ``on_skip(path, reason)``: symlinks (``"symlink"``), names
    starting with a dot, files or folders (``"hidden"``: our own temp files among them), anything
    that is not a regular file or folder (``"special"``) and folders that cannot be read
    (``"unreadable: <strerror>"``).  ``root`` itself may be a symlink.  Blocking: run it in a thread.
    """

    def skip(path: Path, reason: str) -> None:
        if on_skip is not None:
            on_skip(path, reason)

    def walk(folder: Path) -> Iterator[tuple[Path, os.stat_result]]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if folder == root:
                raise
            skip(folder, f"unreadable: {exc.strerror or exc}")
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                skip(path, "hidden")
            elif entry.is_symlink():
                skip(path, "symlink")
            elif entry.is_dir(follow_symlinks=False):
                yield from walk(path)
            else:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    yield path, st
                else:
                    skip(path, "special")

    root = Path(root)
    yield from walk(root)
