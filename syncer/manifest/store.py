"""The SQLite manifest: every item's progress, every run, and the audit trail.

One connection per process, used from one worker thread only (``Manifest.call``), so the event loop
never blocks on SQLite and sqlite3's thread check holds.  Every write goes through a method of
:class:`Manifest`; during a run the :class:`Recorder` task batches outcomes into one transaction
(one fsync per batch, not per file).

Schema versions live in ``PRAGMA user_version``; ``MIGRATIONS[n]`` upgrades version n to n+1.  A
manifest written by a newer syncer is refused rather than guessed at.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

if TYPE_CHECKING:
    import asyncio

    import sqlite_utils

from syncer.errors import LocalIOError, ManifestError
from syncer.manifest.failures import FailureRecords, now_iso
from syncer.manifest.opening import open_readonly, private_if_empty, refuse_folder
from syncer.manifest.reports import ReportQueries
from syncer.manifest.schema import (  # noqa: F401 - the schema's names, re-exported
    ENCRYPTION_SCHEMA,
    INSERTABLE,
    MIGRATIONS,
    PULL_KEY,
    PUSH_KEY,
    READABLE_FROM,
    SCHEMA_VERSION,
    TABLE_KEYS,
    utils_db,
)

T = TypeVar("T")


def _check_usable(path: Path, version: int, tables: int) -> None:
    if version > SCHEMA_VERSION:
        raise ManifestError(
            f"{path} was written by a newer syncer (schema {version}, this one knows {SCHEMA_VERSION}):"
            " upgrade syncer"
        )
    if version == 0 and tables:
        raise ManifestError(f"{path} is an SQLite database but not a syncer manifest")


def _sqlite_failure(exc: sqlite3.Error, what: str) -> LocalIOError | ManifestError:
    """Our error for an SQLite failure: the disk (full, I/O error) is fatal like any disk error; the rest
    is the manifest's own problem."""
    text = str(exc)
    if "disk" in text.lower() or "full" in text.lower() or "I/O" in text:
        return LocalIOError(f"{what}: {text}")
    return ManifestError(f"{what}: {text}")


def _create_private(path: Path) -> None:
    """Create the manifest file 0600 before SQLite opens it (its -wal/-shm copy the mode)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        os.close(fd)


@dataclass
class Update:
    """One outcome to record: set ``fields`` on the row ``key`` of ``table``, and log an event."""

    table: str
    key: tuple[str, ...]
    fields: dict[str, Any]
    event: str | None = None
    bump_attempts: bool = False
    error_class: str | None = None
    detail: str | None = None
    # A row to insert in the same transaction (table, row): the upload history of a finished push.
    insert: tuple[str, dict[str, Any]] | None = None
    # A folder to fsync before this batch commits: the rename of a downloaded file into it must be
    # durable before the file is recorded done.  Many files share a folder: one fsync serves them all.
    sync_dir: str | None = None
    done: asyncio.Future[None] | None = field(default=None, repr=False, compare=False)


class Manifest(FailureRecords, ReportQueries):
    """The manifest database; open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self.conn = conn
        self._db: sqlite_utils.Database | None = None
        self._savepoints = 0
        self.version = SCHEMA_VERSION
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifest")

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = True, readonly: bool = False) -> Manifest:
        """Open (and create or upgrade) the manifest; ManifestError when it cannot be used.

        ``readonly`` (status, verify, dry runs) writes nothing: ``mode=ro``, and where SQLite cannot create
        the ``-wal``/``-shm`` files a WAL reader needs (a read-only folder, a read-only mount) the file is
        read as ``immutable`` (no locks, no side files; a run writing at that very moment is not seen)."""
        path = Path(path)
        refuse_folder(path)
        if not path.exists():
            if not create or readonly:
                raise ManifestError(f"no manifest at {path}: nothing has run with this configuration yet")
            try:
                _create_private(path)
            except OSError as exc:
                raise ManifestError(f"cannot create the manifest {path}: {exc.strerror or exc}") from exc
        elif not readonly:
            private_if_empty(path)
        try:
            if readonly:
                conn, version, tables = open_readonly(path)
            else:
                conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise ManifestError(f"{path} is not a syncer manifest (not an SQLite database: {exc})") from exc
        try:
            # Refused before anything (the journal mode included) is written to it.
            _check_usable(path, version, tables)
            if readonly and version < READABLE_FROM:
                raise ManifestError(f"{path} has an older schema ({version}); run any pull or push to upgrade it")
        except ManifestError:
            conn.close()
            raise
        self = cls(path, conn)
        self.version = version
        if not readonly:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                self._migrate(version)
            except BaseException as exc:
                self.close()
                if isinstance(exc, sqlite3.Error):
                    raise _sqlite_failure(exc, f"cannot prepare the manifest {path}") from exc
                raise
        return self

    @staticmethod
    def check(path: str | os.PathLike) -> None:
        """Refuse, reading only, a manifest that cannot be used (not SQLite, someone else's database, a
        newer schema) before a run writes anything, its lock file included.  A missing manifest passes:
        the run creates it.  Whatever cannot be told here is left to :meth:`open`."""
        path = Path(path)
        refuse_folder(path)
        if not path.is_file():
            return
        try:
            conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error:
            return
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.OperationalError:
            return  # locked, or a WAL that a read-only connection cannot open: open() decides
        except sqlite3.DatabaseError as exc:
            raise ManifestError(f"{path} is not a syncer manifest (not an SQLite database: {exc})") from exc
        finally:
            conn.close()
        _check_usable(path, version, tables)

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils on the same connection (:func:`~syncer.manifest.schema.utils_db`), made on first
        use: nothing in a run needs it (migrations and the hot path are plain SQL)."""
        if self._db is None:
            self._db = utils_db(self.conn)
        return self._db

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[None]:
        """A transaction, or a savepoint inside one (so writes compose)."""
        if self.conn.in_transaction:
            self._savepoints += 1
            name = f"sp{self._savepoints}"
            self.conn.execute(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                self.conn.execute(f"ROLLBACK TO {name}")
                self.conn.execute(f"RELEASE {name}")
                raise
            self.conn.execute(f"RELEASE {name}")
            return
        self.conn.execute("BEGIN")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _migrate(self, version: int) -> None:
        """Upgrade to SCHEMA_VERSION, one step per transaction (a crash leaves the last complete step).
        A new manifest gets every step in one transaction: one fsync instead of one a step (a first run
        starts ~8 ms sooner), and a crash leaves it empty, to be made again by the next run."""
        if version == 0:
            with self._atomic():
                for step in range(SCHEMA_VERSION):
                    MIGRATIONS[step](self.conn)
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.version = SCHEMA_VERSION
            return
        while version < SCHEMA_VERSION:
            with self._atomic():
                MIGRATIONS[version](self.conn)
                version += 1
                self.conn.execute(f"PRAGMA user_version = {version}")
            self.version = version

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the manifest's own thread (the only thread that touches the connection)."""
        import asyncio  # here: the readers (status, ack, verify) never start a loop, nor pay for asyncio

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        try:
            with self._atomic():
                yield
        except sqlite3.OperationalError as exc:
            failure = _sqlite_failure(exc, f"cannot write the manifest {self.path}")
            if isinstance(failure, ManifestError):
                failure = ManifestError(f"manifest {self.path}: {exc}")
            raise failure from exc

    # -- runs ----------------------------------------------------------------------------------
    def start_run(self, kind: str, details: dict[str, Any] | None = None) -> str:
        run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        with self._tx():
            self.conn.execute(
                "INSERT INTO runs (id, kind, started, pid, host, outcome, details) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, kind, now_iso(), os.getpid(), socket.gethostname(), "running",
                 json.dumps(details or {}, sort_keys=True)))
        return run_id

    def finish_run(self, run_id: str, outcome: str, counts: dict[str, int]) -> None:
        with self._tx():
            self.conn.execute(
                "UPDATE runs SET ended = ?, outcome = ?, files_done = ?, bytes_done = ?, failed = ?, skipped = ?"
                " WHERE id = ?",
                (now_iso(), outcome, counts.get("files_done", 0), counts.get("bytes_done", 0),
                 counts.get("failed", 0), counts.get("skipped", 0), run_id))

    def mark_abandoned_runs(self) -> int:
        """Runs still 'running' were killed (the caller holds the lock, so none is alive)."""
        with self._tx():
            cur = self.conn.execute(
                "UPDATE runs SET outcome = 'killed' WHERE outcome = 'running' AND ended IS NULL")
        return cur.rowcount

    # -- generic batched writes ----------------------------------------------------------------
    def apply(self, updates: Iterable[Update], run_id: str | None) -> None:
        """Record a batch of outcomes in one transaction."""
        at = now_iso()
        events: list[tuple] = []
        grouped: dict[tuple, list[tuple]] = {}
        inserts: dict[tuple[str, tuple[str, ...]], list[tuple]] = {}
        for up in updates:
            if up.insert is not None:
                table, row = up.insert
                if table not in INSERTABLE:
                    raise ValueError(f"no inserts into {table} through apply()")
                cols = tuple(sorted(row))
                inserts.setdefault((table, cols), []).append(tuple(row[c] for c in cols))
            fields = dict(up.fields)
            fields["updated_at"] = at
            if run_id is not None:
                fields["run_id"] = run_id
            names = tuple(sorted(fields))
            grouped.setdefault((up.table, names, up.bump_attempts), []).append(
                tuple(fields[n] for n in names) + tuple(up.key))
            if up.event:
                events.append((at, run_id, up.table.split("_")[0], "/".join(up.key), up.event,
                               up.error_class, up.detail))
        with self._tx():
            for (table, cols), rows in inserts.items():
                self.conn.executemany(
                    f"INSERT OR IGNORE INTO [{table}] ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    rows)
            for (table, names, bump), rows in grouped.items():
                sets = ", ".join(f"[{n}] = ?" for n in names)
                if bump:
                    sets += ", attempts = attempts + 1"
                where = " AND ".join(f"[{k}] = ?" for k in TABLE_KEYS[table])
                self.conn.executemany(f"UPDATE [{table}] SET {sets} WHERE {where}", rows)
            if events:
                self.conn.executemany(
                    "INSERT INTO events (at, run_id, kind, item, event, error_class, detail)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)", events)

    # -- pull ----------------------------------------------------------------------------------
    def pull_rows_for_target(self, target_type: str, target_id: str) -> list[dict[str, Any]]:
        cur = self.conn.execute(
            f"SELECT file_id, remote_name, size, state, local_path, path_key, sha256, category, created,"
            f" modified{', acked_at, listed_own' if self.version >= 3 else ''}"
            # The encryption columns only when there: a read-only dry run may see an older schema.
            f"{', encrypted, stored_size, prior_path' if self.version >= ENCRYPTION_SCHEMA else ''}"
            " FROM pull_items WHERE target_type = ? AND target_id = ?", (target_type, target_id))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    def pull_paths_taken(self, path_keys: list[str]) -> set[str]:
        """Which of these path keys some row (of any target) already holds."""
        taken: set[str] = set()
        for i in range(0, len(path_keys), 500):
            chunk = path_keys[i:i + 500]
            qs = ",".join("?" * len(chunk))
            taken.update(r[0] for r in self.conn.execute(
                f"SELECT path_key FROM pull_items WHERE path_key IN ({qs})", chunk))
        return taken

    def apply_pull_listing(self, run_id: str, inserts: list[dict[str, Any]], updates: list[Update],
                           deleted: list[tuple[str, str, str]]) -> None:
        """Record one target's listing: new rows, changed rows, and rows gone remotely."""
        at = now_iso()
        with self._tx():
            if inserts:
                for row in inserts:
                    row.setdefault("first_seen", at)
                    row.setdefault("updated_at", at)
                    row.setdefault("run_id", run_id)
                cols = sorted(inserts[0])
                if any(sorted(r) != cols for r in inserts):
                    raise ValueError("every new pull row must have the same fields")
                self.conn.executemany(
                    f"INSERT INTO pull_items ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    [tuple(r[c] for c in cols) for r in inserts])
                self.conn.executemany(
                    "INSERT INTO events (at, run_id, kind, item, event) VALUES (?, ?, 'pull', ?, 'listed')",
                    [(at, run_id, f"{r['target_type']}/{r['target_id']}/{r['file_id']}") for r in inserts])
            if updates:
                self.apply(updates, run_id)
            if deleted:
                self.apply([Update("pull_items", key, {"state": "remote_deleted"}, event="remote_deleted")
                            for key in deleted], run_id)

    # The files the manifest says are on disk (verify's subject): done, or kept after a remote delete.
    # (``+state`` in the pages' query keeps SQLite off the state index there: walking the path index in
    # order makes each page a short range read instead of a scan and sort of the whole table.)
    _DONE_COLS = "SELECT target_type, target_id, file_id, local_path, size, sha256, path_key{enc} FROM pull_items"
    _DONE = f"{_DONE_COLS} WHERE state IN ('done', 'remote_deleted') AND sha256 IS NOT NULL"
    _DONE_PAGE = (f"{_DONE_COLS} WHERE +state IN ('done', 'remote_deleted') AND sha256 IS NOT NULL"
                  " AND path_key > ? ORDER BY path_key LIMIT ?")

    # -- push ----------------------------------------------------------------------------------
    def push_rows_for_user(self, user_id: str) -> dict[str, dict[str, Any]]:
        acked = ", error_class, acked_at" if self.version >= 3 else ", error_class, NULL AS acked_at"
        cur = self.conn.execute(
            "SELECT rel_path, size, mtime_ns, sha256, state, remote_id, attempts, intent_at" + acked
            + " FROM push_items WHERE user_id = ?", (user_id,))
        cols = [d[0] for d in cur.description]
        return {row[0]: dict(zip(cols, row, strict=True)) for row in cur}

    def upsert_push_items(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """Insert new local files, or reset changed ones to pending (their old upload stays recorded)."""
        at = now_iso()
        for row in rows:
            row.setdefault("updated_at", at)
            row["run_id"] = run_id
        grouped: dict[tuple[str, ...], list[tuple]] = {}
        for row in rows:
            cols = tuple(sorted(row))
            grouped.setdefault(cols, []).append(tuple(row[c] for c in cols))
        with self._tx():
            for cols, values in grouped.items():
                sets = ", ".join(f"[{c}] = excluded.[{c}]" for c in cols if c not in PUSH_KEY)
                self.conn.executemany(
                    f"INSERT INTO push_items ({', '.join(f'[{c}]' for c in cols)})"
                    f" VALUES ({', '.join('?' * len(cols))})"
                    f" ON CONFLICT (user_id, rel_path) DO UPDATE SET {sets}", values)

    def push_claimed_remote_ids(self, user_id: str) -> set[str]:
        """Remote documents some local file already owns (never adopt these for another file)."""
        cur = self.conn.execute(
            "SELECT remote_id FROM push_uploads WHERE user_id = ? UNION"
            " SELECT remote_id FROM push_items WHERE user_id = ? AND remote_id IS NOT NULL",
            (user_id, user_id))
        return {r[0] for r in cur}

    @staticmethod
    def push_upload_update(run_id: str, user_id: str, rel_path: str, sha256: str | None, size: int,
                           remote_id: str, remote_name: str, adopted: bool) -> Update:
        """The upload is known to exist remotely: the item is done and the upload joins the history
        (``push_uploads``), both in one transaction."""
        at = now_iso()
        return Update(
            "push_items", (user_id, rel_path),
            {"state": "done", "remote_id": remote_id, "remote_name": remote_name, "uploaded_at": at,
             "last_error": None, "error_class": None},
            event="adopted" if adopted else "uploaded",
            insert=("push_uploads", {"user_id": user_id, "rel_path": rel_path, "sha256": sha256, "size": size,
                                     "remote_id": remote_id, "uploaded_at": at, "run_id": run_id,
                                     "adopted": int(adopted)}))



__all__ = ["Manifest", "Update", "now_iso"]
