"""The manifest: schema versions and migrations, and refusing what it cannot use.

- A new manifest is created at the current schema, 0600.
- An old (v1) manifest, built here as v1 code wrote it, opens and upgrades to v2 with every row kept;
  the v1 -> v2 step is idempotent; a read-only reader (status, verify) uses a v1 manifest as it is.
- A migration that fails leaves the manifest at the last complete version; a new manifest is made in
  one transaction (left empty when a step fails), with the schema the steps one by one make.
- A file that is not SQLite, an SQLite file that is not a manifest, and a manifest of a newer schema
  are refused with a message naming the problem, and left byte for byte as they were.
- Atomic batches under SIGKILL: tests/reliability/test_manifest_kill.py.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
import sqlite_utils
from reliability_util import batch_counts, seed_batch_manifest

from syncer.errors import LocalIOError, ManifestError
from syncer.manifest import MIGRATIONS, SCHEMA_VERSION, Manifest, Update
from syncer.manifest import schema as manifest_mod

V2_INDEXES = {"pull_state_size", "push_state_size"}


def indexes(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def dump(path: Path) -> list[str]:
    """Every row of every table, as SQL: equal dumps mean equal contents."""
    conn = sqlite3.connect(path)
    try:
        return [line for line in conn.iterdump() if line.startswith("INSERT")]
    finally:
        conn.close()


def make_v1(path: Path, *, rows: int = 50) -> None:
    """A manifest as syncer with schema 1 left it: the v1 tables and indexes, user_version 1, data."""
    conn = sqlite3.connect(path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    conn.execute("PRAGMA journal_mode=WAL")
    with db.atomic():
        MIGRATIONS[0](db)
        conn.execute("PRAGMA user_version = 1")
    with db.atomic():
        conn.execute("INSERT INTO runs (id, kind, started, ended, outcome) VALUES ('r1', 'pull', 'a', 'b', 'ok')")
        for i in range(rows):
            conn.execute(
                "INSERT INTO pull_items (target_type, target_id, file_id, local_path, path_key, state, size, sha256)"
                " VALUES ('user', '1', ?, ?, ?, ?, ?, ?)",
                (f"f{i}", f"user/1/user_document/n{i}.pdf", f"user/1/user_document/n{i}.pdf",
                 "done" if i % 3 else "failed", i * 10, "0" * 64))
            conn.execute("INSERT INTO push_items (user_id, rel_path, size, state) VALUES ('2', ?, ?, 'done')",
                         (f"doc{i}.pdf", i))
            conn.execute("INSERT INTO events (at, run_id, kind, item, event) VALUES ('a', 'r1', 'pull', ?, 'done')",
                         (f"user/1/f{i}",))
    conn.close()
    assert user_version(path) == 1 and not (indexes(path) & V2_INDEXES)


# -- versions ----------------------------------------------------------------------------------------------

def test_a_new_manifest_is_created_at_the_current_schema_and_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.sqlite"
    old = os.umask(0)
    try:
        m = Manifest.open(path)
    finally:
        os.umask(old)
    m.close()
    assert SCHEMA_VERSION == 5
    assert user_version(path) == SCHEMA_VERSION
    assert V2_INDEXES <= indexes(path) and {"pull_todo", "pull_path", "push_todo"} <= indexes(path)
    assert {"restore_dest", "restore_state"} <= indexes(path)  # v3: restore_items
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    m = Manifest.open(path)  # opening again changes nothing
    m.close()
    assert user_version(path) == SCHEMA_VERSION


def table_rows(path: Path, columns: dict[str, list[str]]) -> dict[str, list[tuple]]:
    """Every row of every table, reading only the given columns of each."""
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT {', '.join(cols)} FROM {t} ORDER BY rowid").fetchall()
                for t, cols in columns.items()}
    finally:
        conn.close()


def test_a_v1_manifest_upgrades_to_the_current_schema_keeping_every_row(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    make_v1(path)
    conn = sqlite3.connect(path)
    columns = {t: [c[1] for c in conn.execute(f"PRAGMA table_info({t})")]
               for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    before = table_rows(path, columns)
    m = Manifest.open(path)
    try:
        assert m.version == SCHEMA_VERSION
        plan = " ".join(str(r) for r in m.conn.execute(
            "EXPLAIN QUERY PLAN SELECT state, count(*), sum(size) FROM pull_items GROUP BY state"))
        assert "COVERING INDEX pull_state_size" in plan
        assert m.summary()["pull"]["states"]["done"]["count"] == 33
    finally:
        m.close()
    assert user_version(path) == SCHEMA_VERSION and V2_INDEXES <= indexes(path)
    assert table_rows(path, columns) == before  # v3 adds columns only (NULL until used)


def test_the_v1_to_v2_step_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    make_v1(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE INDEX pull_state_size ON pull_items(state, size)")  # half done by hand, say
    conn.close()
    m = Manifest.open(path)
    MIGRATIONS[1](m.db)  # and once more on a v2 manifest
    MIGRATIONS[2](m.db)  # the v2 -> v3 step too
    MIGRATIONS[3](m.db)  # and v3 -> v4
    m.close()
    assert user_version(path) == SCHEMA_VERSION and V2_INDEXES <= indexes(path)


def test_read_only_readers_use_a_v1_manifest_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    make_v1(path)
    m = Manifest.open(path, create=False, readonly=True)
    try:
        summary = m.summary()
        assert summary["schema"] == 1 and summary["pull"]["states"]["failed"]["count"] == 17
        assert len(m.pull_done_rows()) == 33
    finally:
        m.close()
    assert user_version(path) == 1, "a read-only open must not upgrade"


def test_a_failing_migration_leaves_the_last_complete_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.sqlite"
    make_v1(path)
    before = dump(path)

    def half_then_fail(db: sqlite_utils.Database) -> None:
        db.execute("CREATE INDEX pull_state_size ON pull_items(state, size)")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setitem(manifest_mod.MIGRATIONS, 1, half_then_fail)
    with pytest.raises(LocalIOError, match="cannot prepare the manifest .*disk I/O error"):
        Manifest.open(path)
    assert user_version(path) == 1 and "pull_state_size" not in indexes(path)
    assert dump(path) == before
    monkeypatch.undo()
    Manifest.open(path).close()
    assert user_version(path) == SCHEMA_VERSION


def schema_of(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        conn.close()


def test_a_new_manifest_in_one_transaction_equals_an_upgraded_one(tmp_path: Path) -> None:
    """A new manifest gets every step at once; the result is what the steps one by one make of a v1 file."""
    new, old = tmp_path / "new.sqlite", tmp_path / "old.sqlite"
    Manifest.open(new).close()
    make_v1(old, rows=0)
    Manifest.open(old).close()
    assert user_version(new) == user_version(old) == SCHEMA_VERSION
    assert schema_of(new) == schema_of(old)


def test_a_new_manifest_that_fails_half_way_is_left_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.sqlite"

    def fail(db: sqlite3.Connection) -> None:
        db.execute("CREATE INDEX half ON pull_items(size)")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setitem(manifest_mod.MIGRATIONS, 3, fail)
    with pytest.raises(LocalIOError, match="cannot prepare the manifest .*disk I/O error"):
        Manifest.open(path)
    assert user_version(path) == 0 and schema_of(path) == []  # nothing of the earlier steps either
    monkeypatch.undo()
    Manifest.open(path).close()
    assert user_version(path) == SCHEMA_VERSION


def test_an_empty_file_becomes_a_manifest(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    path.write_bytes(b"")
    Manifest.open(path).close()
    assert user_version(path) == SCHEMA_VERSION


@pytest.mark.parametrize(("content", "words"), [
    (b"this is a text file, not a database\n" * 200, "not an SQLite database"),
    (b"SQLite format 3\x00" + b"\xff" * 4080, "not an SQLite database"),
])
def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "m.sqlite"
    path.write_bytes(content)
    for readonly in (False, True):
        with pytest.raises(ManifestError, match=words) as info:
            Manifest.open(path, readonly=readonly)
        assert str(path) in str(info.value)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.sqlite"]


def test_an_sqlite_file_that_is_not_a_manifest_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE patients (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(ManifestError, match="SQLite database but not a syncer manifest"):
        Manifest.open(path)
    assert path.read_bytes() == before
    assert "runs" not in {r for (r,) in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}


def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    Manifest.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(ManifestError, match=f"newer syncer \\(schema {SCHEMA_VERSION + 1}, this one knows "
                                                f"{SCHEMA_VERSION}\\): upgrade syncer"):
            Manifest.open(path, readonly=readonly)
    assert path.read_bytes() == before
    assert user_version(path) == SCHEMA_VERSION + 1


def test_update_records_the_event_in_the_same_transaction(tmp_path: Path) -> None:
    """An outcome and its audit event are one write: a failure between them is impossible to observe."""
    path = tmp_path / "m.sqlite"
    seed_batch_manifest(path, 3)
    m = Manifest.open(path)
    try:
        bad = Update("pull_items", ("user", "0", "f0"), {"state": "done"}, event="done")
        worse = Update("no_such_table", ("x",), {"state": "done"}, event="done")
        with pytest.raises(Exception):  # noqa: B017 - any failure: the point is what was left behind
            m.apply([bad, worse], "r")
    finally:
        m.close()
    assert batch_counts(path)[:3] == (0, 0, 0)


# -- the recorder --------------------------------------------------------------------------------------------

async def test_a_recorder_that_cannot_write_fails_every_waiter_instead_of_hanging(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch being written fails (disk full) while another outcome waits in the queue: both waiters
    get the error (an upload's intent waits like this before its POST); later puts raise at once."""
    import asyncio
    import threading

    from syncer.manifest import Recorder

    m = Manifest.open(tmp_path / "m.sqlite")
    gate = threading.Event()

    def apply_fails(updates, run_id):
        gate.wait(5)
        raise LocalIOError("cannot write the manifest: database or disk is full")

    monkeypatch.setattr(m, "apply", apply_fails)
    rec = Recorder(m, "run", interval=0.0)
    await rec.__aenter__()
    try:
        first = asyncio.create_task(rec.put_and_wait(Update("pull_items", ("user", "1", "a"), {"state": "done"})))
        await asyncio.sleep(0.05)  # the recorder is inside apply() with the first batch
        second = asyncio.create_task(rec.put_and_wait(Update("pull_items", ("user", "1", "b"), {"state": "done"})))
        await asyncio.sleep(0.05)
        gate.set()
        for waiter in (first, second):
            with pytest.raises(LocalIOError, match="disk is full"):
                await asyncio.wait_for(waiter, 5)
        with pytest.raises(LocalIOError):
            rec.put(Update("pull_items", ("user", "1", "c"), {"state": "done"}))
    finally:
        gate.set()
        with pytest.raises(LocalIOError):
            await asyncio.wait_for(rec.close(), 5)
        m.close()


def test_sqlite_utils_plugins_never_touch_the_manifest(tmp_path: Path) -> None:
    """An installed sqlite-utils plugin gets no hook on the manifest's connection (patient data), and
    its schema is made all the same."""
    import sqlite_utils.plugins as su_plugins
    from sqlite_utils import hookimpl

    seen: list[object] = []

    class Spy:
        @hookimpl
        def prepare_connection(self, conn: object) -> None:
            seen.append(conn)

    spy = Spy()
    su_plugins.pm.register(spy, name="syncer-test-spy")
    try:
        sqlite_utils.Database(sqlite3.connect(":memory:"))  # the spy is live: it sees an ordinary database
        assert len(seen) == 1
        m = Manifest.open(tmp_path / "m.sqlite")
        assert m.db["runs"].count == 0  # sqlite-utils on the manifest (made on first use): no plugin either
        m.close()
    finally:
        su_plugins.pm.unregister(spy)
    assert len(seen) == 1
    assert user_version(tmp_path / "m.sqlite") == SCHEMA_VERSION


def test_the_v4_to_v5_step_adds_the_encryption_columns_rows_stay_plain(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    make_v1(path)
    m = Manifest.open(path)
    try:
        MIGRATIONS[4](m.db)  # idempotent: once more on a v5 manifest
        cols = {c.name for c in m.db["pull_items"].columns}
        assert {"encrypted", "stored_sha256", "stored_size", "prior_path"} <= cols
        assert {r[0] for r in m.conn.execute("SELECT encrypted FROM pull_items")} == {0}
        assert m.pull_storage_counts() == {"plain": 33, "encrypted": 0}
        assert m.pull_encrypted_rows() == 0
        assert {"encrypted", "stored_size", "stored_sha256"} <= set(m.pull_done_rows()[0])
    finally:
        m.close()
    assert user_version(path) == 5 and "pull_state_encrypted" in indexes(path)
    # A reader of an older manifest (read only, not upgraded) sees every file as plain.
    old = tmp_path / "old.sqlite"
    make_v1(old)
    m = Manifest.open(old, create=False, readonly=True)
    try:
        assert m.pull_storage_counts() == {"plain": 33, "encrypted": 0} and m.pull_encrypted_rows() == 0
        assert "encrypted" not in m.pull_done_rows()[0]
    finally:
        m.close()


def test_a_read_only_view_refuses_a_manifest_whose_wal_it_cannot_read(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``mode=ro`` cannot open (a read-only folder, as another user), the fallback reads the main file
    as immutable; with changes still in the -wal file that view is stale, so it is refused, not shown."""
    from syncer.manifest import opening

    path = tmp_path / "m.sqlite"
    Manifest.open(path).close()
    writer = sqlite3.connect(path)  # a running writer: its changes sit in the WAL, not yet checkpointed
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO runs (id, kind, started) VALUES ('r1', 'pull', 'now')")
    writer.commit()
    assert os.stat(f"{path}-wal").st_size > 0
    real_connect = sqlite3.connect

    class Refused:  # what a read-only folder does to a WAL reader: it fails at its first read
        def execute(self, *args: object) -> None:
            raise sqlite3.OperationalError("unable to open database file")

        def close(self) -> None:
            pass

    def connect(target: str, *args: object, **kw: object) -> object:
        return real_connect(target, *args, **kw) if "immutable=1" in target else Refused()  # type: ignore[arg-type]

    monkeypatch.setattr(opening.sqlite3, "connect", connect)
    try:
        with pytest.raises(ManifestError, match="write-ahead log"):
            opening.open_readonly(path)
        writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # checkpointed: the main file is the whole manifest
        conn, _, tables = opening.open_readonly(path)
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1 and tables > 0
        conn.close()
    finally:
        writer.close()
