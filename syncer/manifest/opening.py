"""How the manifest file is opened when it is not simply opened for writing: refused when it is a folder,
made private when an empty file is about to be filled, and read without writing anything (``status``,
``verify``, dry runs), even in a read-only folder.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from pathlib import Path
from urllib.parse import quote

from syncer.errors import ManifestError


def refuse_folder(path: Path) -> None:
    if path.is_dir():
        raise ManifestError(f"the manifest path {path} is a folder: manifest.path (or --manifest, $SYNCER_MANIFEST)"
                            f" must name a file, e.g. {path / 'syncer-manifest.sqlite'}")


def private_if_empty(path: Path) -> None:
    """An existing empty file (made by ``touch`` or an installer, 0644) gets patient data now: 0600 first
    (SQLite's -wal/-shm copy its mode).  A manifest with data keeps whatever mode its owner chose."""
    with contextlib.suppress(OSError):
        st = os.stat(path)
        if st.st_size == 0 and stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != 0o600:
            os.chmod(path, 0o600)


def _readonly_uri(path: Path, *, immutable: bool) -> str:
    return f"file:{quote(str(path.resolve()))}?mode=ro" + ("&immutable=1" if immutable else "")


def _wal_has_frames(path: Path) -> bool:
    try:
        return os.stat(f"{path}-wal").st_size > 0
    except OSError:
        return False


def open_readonly(path: Path) -> tuple[sqlite3.Connection, int, int]:
    """A read-only connection and the manifest's (user_version, table count).  ``mode=ro`` first: it sees
    a running writer's WAL.  When that cannot open (a WAL reader must create -shm and -wal if they are not
    there, which a read-only folder forbids), ``immutable=1``: nothing is created; only with no -wal file
    (or an empty one) is the main file the whole manifest, else ManifestError."""
    last: sqlite3.OperationalError | None = None
    for immutable in (False, True):
        if immutable and _wal_has_frames(path):
            # Changes a writer has not checkpointed into the main file yet: an immutable read would show
            # the manifest as it was before them, with no sign of it.
            raise ManifestError(f"{path}: its write-ahead log ({path.name}-wal) holds changes that a read-only"
                                " view of this folder cannot see; run this where the manifest's folder is"
                                " writable, or after the next run has checkpointed it") from last
        conn = sqlite3.connect(_readonly_uri(path, immutable=immutable), uri=True, check_same_thread=False,
                               isolation_level=None, timeout=30)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            return conn, version, tables
        except sqlite3.OperationalError as exc:
            conn.close()
            if "unable to open" not in str(exc) and "readonly" not in str(exc):
                raise
            last = exc
        except BaseException:
            conn.close()
            raise
    assert last is not None
    raise last
