"""Start-up and exit (README, "Start-up"): what a command imports, and how the process ends.

Each check runs syncer in a fresh interpreter, since ``sys.modules`` of the test process holds everything.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import sqlite_utils
from helpers import write_config

from syncer.fakeserver import FakeServer
from syncer.manifest import MIGRATIONS, SCHEMA_VERSION, Manifest

# What only a run (or an optional part of one) needs: a command that runs none must not pay for it.
RUN_ONLY = {"aiohttp", "asyncio", "uvloop", "tenacity", "sqlite_utils", "pyrage", "obstore", "rich"}

# Runs the command line as click's test runner would (``main.main``: no fast exit), then prints the
# exit code and the modules imported as the last line of stdout.
MODULES_AFTER = textwrap.dedent("""
    import json, sys
    from syncer.cli import main
    try:
        main.main(args=sys.argv[1:], prog_name="syncer")
    except SystemExit as exc:
        code = exc.code
    print("\\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
""")


def modules_after(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, set[str]]:
    done = subprocess.run([sys.executable, "-c", MODULES_AFTER, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, cwd=cwd)
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.strip().splitlines()[-1])
    return last["code"], set(last["modules"])


def test_help_imports_no_part_of_a_run() -> None:
    for args in (["--help"], ["pull", "--help"], ["status", "--help"]):
        code, modules = modules_after(args)
        assert code == 0
        needless = modules & (RUN_ONLY | {"sqlite3", "syncer.config", "syncer.run.runner", "syncer.manifest"})
        assert not needless, f"syncer {' '.join(args)} imports {sorted(needless)}"


def test_status_reads_the_manifest_without_an_event_loop(tmp_path: Path) -> None:
    Manifest.open(tmp_path / "manifest.sqlite").close()
    cfg = write_config(tmp_path)
    code, modules = modules_after(["status", "-c", str(cfg)])
    assert code == 0
    assert "syncer.manifest.store" in modules  # it did read the manifest
    assert not modules & RUN_ONLY, f"syncer status imports {sorted(modules & RUN_ONLY)}"


def test_a_first_pull_into_a_folder_imports_only_what_it_uses(tmp_path: Path) -> None:
    srv = FakeServer(seed=5, users=2, files_per_user=2, visits=0)
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv)
        code, modules = modules_after(["pull", "-q", "-c", str(cfg)], env={"VSEE_API_TOKEN": srv.api_key})
    assert code == 0
    assert "aiohttp" in modules  # it did run
    # No manifest tools, no retry machinery (nothing failed), no encryption, no bucket, no terminal bar (-q).
    needless = modules & {"sqlite_utils", "tenacity", "pyrage", "obstore", "boto3", "rich"}
    assert not needless, f"a first pull into a folder imports {sorted(needless)}"
    conn = sqlite3.connect(tmp_path / "manifest.sqlite")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM pull_items WHERE state = 'done'").fetchone()[0] == 4
    finally:
        conn.close()


def test_a_new_manifest_has_the_tables_sqlite_utils_made() -> None:
    """Schema 1 is plain SQL now: the same text sqlite-utils wrote for the same definitions (kept here)."""
    made = sqlite3.connect(":memory:")
    MIGRATIONS[0](made)
    old = sqlite3.connect(":memory:")
    db = sqlite_utils.Database(old, execute_plugins=False)
    db["runs"].create(
        {"id": str, "kind": str, "started": str, "ended": str, "outcome": str, "pid": int, "host": str,
         "files_done": int, "bytes_done": int, "failed": int, "skipped": int, "details": str}, pk="id")
    db["pull_items"].create(
        {"target_type": str, "target_id": str, "file_id": str, "category": str, "remote_name": str,
         "size": int, "created": int, "modified": int, "ext": str, "owner_id": str,
         "local_path": str, "path_key": str, "state": str, "attempts": int, "last_error": str,
         "error_class": str, "sha256": str, "bytes": int, "first_seen": str, "updated_at": str,
         "done_at": str, "run_id": str},
        pk=("target_type", "target_id", "file_id"), not_null={"state", "local_path"}, defaults={"attempts": 0})
    db.execute("CREATE INDEX pull_todo ON pull_items(state) WHERE state IN ('pending', 'failed')")
    db.execute("CREATE UNIQUE INDEX pull_path ON pull_items(path_key)")
    db["push_items"].create(
        {"user_id": str, "rel_path": str, "size": int, "mtime_ns": int, "sha256": str, "state": str,
         "remote_id": str, "remote_name": str, "attempts": int, "last_error": str, "error_class": str,
         "intent_at": float, "uploaded_at": str, "updated_at": str, "run_id": str},
        pk=("user_id", "rel_path"), not_null={"state"}, defaults={"attempts": 0})
    db.execute("CREATE INDEX push_todo ON push_items(state) WHERE state != 'done'")
    db["push_uploads"].create(
        {"id": int, "user_id": str, "rel_path": str, "sha256": str, "size": int, "remote_id": str,
         "uploaded_at": str, "run_id": str, "adopted": int}, pk="id")
    db.execute("CREATE UNIQUE INDEX push_uploads_remote ON push_uploads(remote_id)")
    db["events"].create(
        {"id": int, "at": str, "run_id": str, "kind": str, "item": str, "event": str, "error_class": str,
         "detail": str}, pk="id")
    db.execute("CREATE INDEX events_run ON events(run_id)")
    query = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid"
    assert made.execute(query).fetchall() == old.execute(query).fetchall()


# -- the end of the process ------------------------------------------------------------------------------

# ``main()`` as the ``syncer`` script calls it, with what a fast exit must keep and what it skips.
ENTRY = textwrap.dedent("""
    import atexit, sys, threading, time
    from syncer.cli import main

    class Teardown:
        def __del__(self):  # runs only when the interpreter tears its modules down
            sys.stderr.write("teardown ran\\n")

    keep = Teardown()
    atexit.register(lambda: sys.stdout.write("atexit ran\\n"))
    sys.stdout.write("buffered, not flushed\\n")
    if "--with-thread" in sys.argv:
        sys.argv.remove("--with-thread")
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished", flush=True))).start()
    sys.argv[0] = "syncer"
    main()
""")


def run_entry(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout really buffered
    if token is not None:
        env["VSEE_API_TOKEN"] = token
    return subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, timeout=60, env=env)


def test_the_process_ends_with_its_code_output_and_atexit_callbacks_but_no_teardown(tmp_path: Path) -> None:
    done = run_entry("status", "-c", str(tmp_path / "missing.toml"))
    assert done.returncode == 2
    assert "does not exist" in done.stderr
    assert done.stdout == "buffered, not flushed\natexit ran\n"
    assert "teardown ran" not in done.stderr
    ok = run_entry("--version")
    assert ok.returncode == 0 and "syncer, version" in ok.stdout and "atexit ran" in ok.stdout


def test_a_pull_and_a_status_leave_no_thread_behind_so_they_end_at_once(tmp_path: Path) -> None:
    """Every thread a run starts (the manifest's, the writers', the loop's) is joined before the command
    returns; one left behind would bring the teardown back (and go unnoticed but for this)."""
    srv = FakeServer(seed=6, users=2, files_per_user=3, visits=1)
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv)
        pull = run_entry("pull", "-c", str(cfg), token=srv.api_key)
    assert pull.returncode == 0, pull.stderr
    assert "pull ok" in pull.stdout and pull.stdout.endswith("atexit ran\n")
    assert "teardown ran" not in pull.stderr
    assert not (tmp_path / "manifest.sqlite-wal").exists()  # the manifest was closed, not just abandoned
    status = run_entry("status", "-c", str(cfg))
    assert status.returncode == 0 and "teardown ran" not in status.stderr


def test_a_thread_still_running_gets_the_usual_ending() -> None:
    done = run_entry("--with-thread", "--version")
    assert done.returncode == 0
    assert "thread finished" in done.stdout and "atexit ran" in done.stdout
    assert "teardown ran" in done.stderr  # Python's own shutdown: it joined the thread first
