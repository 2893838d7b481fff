"""syncer push against the built-in server over loopback: exactly once, through faults and crashes.

Every check of "exactly once" counts the server's own stored files per user and (name, sha256), so a
duplicate or a missing upload cannot hide behind the manifest's view of things.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import write_tokens

from syncer import exitcodes
from syncer.api.client import FilesClient
from syncer.cli import main as cli_main
from syncer.fakeserver import FakeServer, Faults
from syncer.manifest import Manifest
from syncer.push.job import plan_user

FILES_PER_USER = 20


# -- helpers ---------------------------------------------------------------------------------------

def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_user_tree(folder: Path, rng: random.Random, count: int = FILES_PER_USER) -> Counter[tuple[str, str]]:
    """``count`` regular files in nested folders (unicode and NFD names, an empty file, one base name in
    two folders), plus what must never be uploaded: a symlink to a file, a symlink to a folder, a dotfile
    and a hidden folder.  Returns the expected documents as a Counter of (name, sha256)."""
    folders = ["", "scans", "scans/2024", "deep/ä/ö/ü"]
    expected: Counter[tuple[str, str]] = Counter()
    for j in range(count):
        sub = folders[j % len(folders)]
        if j == 0:
            name, data = "empty.pdf", b""
        elif j in (1, 2):
            name, data = "same name.txt", f"copy {j} ".encode() * (j + 3)  # same base name, two folders
        elif j == 3:
            name, data = "cafe\u0301 nfd.txt", rng.randbytes(300)
        else:
            name = f"{['résumé', '報告', 'scan 01', 'Ünïcödé file', 'notes'][j % 5]} {j}.{['pdf', 'txt', 'png'][j % 3]}"
            data = rng.randbytes(rng.randrange(1, 6000))
        path = folder / sub / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[(name, sha(data))] += 1
    os.symlink("empty.pdf", folder / "link to empty.pdf")
    os.symlink("scans", folder / "linked folder")
    (folder / ".DS_Store").write_bytes(b"finder junk")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("[core]\n")
    return expected


def write_file(path: Path | bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def server_docs(srv: FakeServer, user: str) -> Counter[tuple[str, str]]:
    return Counter((f["name"], f["sha256"]) for f in srv.files()
                   if f["target_type"] == "user" and f["target_id"] == user)



def write_config(tmp: Path, srv: FakeServer | None, *, attempts: int = 6, concurrency: int = 8,
                 manifest: str = "manifest.sqlite", source: str = "src", tokens: str = "tokens.csv") -> Path:
    base = f'base_url = "{srv.base_url}"\naccount_code = "{srv.account_code}"\n' if srv else ""
    text = (f"[api]\n{base}timeout_connect = 5\ntimeout_read = 10\n"
            f'[manifest]\npath = "{manifest}"\n'
            f"[retry]\nattempts = {attempts}\nmin_wait = 0.01\nmax_wait = 0.05\n"
            f'[push]\nsource = "{source}"\ntokens_file = "{tokens}"\nconcurrency = {concurrency}\n')
    path = tmp / "syncer.toml"
    path.write_text(text, encoding="utf-8")
    return path



def setup_users(tmp: Path, srv: FakeServer, n: int, *, seed: int = 0,
                count: int = FILES_PER_USER) -> dict[str, Counter[tuple[str, str]]]:
    rng = random.Random(seed)
    expected = {}
    for _ in range(n):
        user = srv.add_user()
        expected[user] = build_user_tree(tmp / "src" / user, rng, count)
    write_tokens(tmp / "tokens.csv", {u: srv.token_for(u) for u in expected})
    return expected


def assert_exactly_once(srv: FakeServer, expected: dict[str, Counter[tuple[str, str]]]) -> None:
    for user, want in expected.items():
        got = server_docs(srv, user)
        assert got == want, f"user {user}: missing {want - got}, extra {got - want}"


def manifest_rows(path: Path, sql: str, *args: Any) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


@pytest.fixture
def syncer_records() -> Any:
    """Every record the syncer logger emits at INFO and above (whatever handlers a CLI test left)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("syncer")
    handler = Keep(level=logging.INFO)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def record_text(r: logging.LogRecord) -> str:
    return r.getMessage() + " " + " ".join(str(v) for k, v in vars(r).items() if k.startswith("ev_"))


# -- the main scenario -----------------------------------------------------------------------------

async def test_every_regular_file_exactly_once_then_a_rerun_sends_nothing(
        tmp_path: Path, syncer_records: list[logging.LogRecord], run_push: Callable[..., Any]) -> None:
    async with FakeServer() as srv:
        expected = setup_users(tmp_path, srv, 10)
        cfg = write_config(tmp_path, srv)
        stats, code = await run_push(srv, cfg)
        assert code == exitcodes.OK, stats
        assert stats.files_done == 10 * FILES_PER_USER
        assert stats.failed == stats.permanent == stats.adopted == 0
        assert stats.targets == 10
        # Symbolic links and dotfiles are left out by rule: not "already up to date" (nothing was uploaded).
        assert stats.skipped == 0 and stats.left_out >= 10 * 2
        assert_exactly_once(srv, expected)
        assert srv.counters["upload"] == 10 * FILES_PER_USER
        # identical bytes, not only identical hashes as the server reports them
        for f in srv.files():
            local = [p for p in (tmp_path / "src" / f["target_id"]).rglob("*")
                     if p.name == f["name"] and not p.is_symlink() and p.is_file()]
            assert srv.file_bytes(f["id"]) in [p.read_bytes() for p in local]
        rows = manifest_rows(tmp_path / "manifest.sqlite",
                             "SELECT state, count(*), count(sha256), count(remote_id) FROM push_items GROUP BY state")
        assert rows == [("done", 200, 200, 200)]
        assert manifest_rows(tmp_path / "manifest.sqlite", "SELECT count(*) FROM push_uploads") == [(200,)]

        stats2, code2 = await run_push(srv, cfg)
        assert code2 == exitcodes.OK
        assert stats2.files_done == 0 and stats2.files_total == 0
        assert (stats2.skipped, stats2.left_out) == (10 * FILES_PER_USER, stats.left_out)
        assert srv.counters["upload"] == 10 * FILES_PER_USER
        assert srv.counters["list"] == 0  # nothing unknown: nothing to look for
        assert_exactly_once(srv, expected)
    # info logs name users and ids, never a file name
    names = {name for want in expected.values() for name, _ in want}
    for r in syncer_records:
        assert not any(n in record_text(r) for n in names if len(n) > 4), record_text(r)
    symlink_lines = [r.getMessage() for r in syncer_records if "symlinks" in r.getMessage()]
    assert len(symlink_lines) == 20  # once per user per run: "skipped 2 symlinks for user X"
    assert all("skipped 2 symlinks for user" in m for m in symlink_lines)


async def test_store_then_drop_500_and_429_still_exactly_once(tmp_path: Path, run_push: Callable[..., Any]) -> None:
    faults = Faults(store_then_drop=0.2, error_500=0.1, error_429=0.1, retry_after=0)
    async with FakeServer(faults=faults) as srv:
        expected = setup_users(tmp_path, srv, 10, seed=1)
        cfg = write_config(tmp_path, srv, attempts=8)
        runs = []
        for _ in range(4):
            stats, code = await run_push(srv, cfg)
            runs.append((stats, code))
            # after every run: no document twice (a failed item may still be missing)
            for user, want in expected.items():
                got = server_docs(srv, user)
                assert not (got - want), f"duplicates for {user}: {got - want}"
            if code == exitcodes.OK:
                break
        assert runs[-1][1] == exitcodes.OK
        assert_exactly_once(srv, expected)
        assert srv.counters["fault_store_then_drop"] > 10
        assert srv.counters["fault_error_500"] > 5 and srv.counters["fault_error_429"] > 5
        adopted = sum(s.adopted for s, _ in runs)
        assert adopted >= srv.counters["fault_store_then_drop"] - 2  # each dropped answer was found
        assert manifest_rows(tmp_path / "manifest.sqlite", "SELECT count(*) FROM push_uploads WHERE adopted = 1") \
            == [(adopted,)]


async def test_every_answer_lost_every_upload_adopted(tmp_path: Path, run_push: Callable[..., Any]) -> None:
    async with FakeServer(faults=Faults(store_then_drop=1.0)) as srv:
        expected = setup_users(tmp_path, srv, 2, count=6)
        stats, code = await run_push(srv, write_config(tmp_path, srv))
        assert code == exitcodes.OK
        assert stats.adopted == stats.files_done == 12
        assert srv.counters["upload"] == 12  # never sent twice
        assert_exactly_once(srv, expected)


# -- crashes -----------------------------------------------------------------------------------------

def _cli_env(srv: FakeServer) -> dict[str, str]:
    env = dict(os.environ, VSEE_API_TOKEN=srv.api_key, PYTHONUNBUFFERED="1")
    env.pop("SYNCER_CONFIG", None)
    return env


def test_sigkill_at_several_points_then_rerun_exactly_once(tmp_path: Path) -> None:
    srv = FakeServer(faults=Faults(latency_ms=40))
    with srv.run_in_thread():
        expected = setup_users(tmp_path, srv, 3, seed=2, count=16)
        cfg = write_config(tmp_path, srv, concurrency=4)
        cmd = [sys.executable, "-m", "syncer", "push", "-c", str(cfg), "-q"]
        kills = 0
        for after in (1, 6, 14):  # kill once this many more POSTs have reached the server
            start = srv.counters["upload"]
            proc = subprocess.Popen(cmd, env=_cli_env(srv), cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while srv.counters["upload"] < start + after and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=30)
            for user, want in expected.items():
                assert not (server_docs(srv, user) - want), "a duplicate after a kill"
        assert kills == 3
        stored_before_rerun = sum(sum(server_docs(srv, u).values()) for u in expected)
        assert 0 < stored_before_rerun < 48  # the kills landed mid-run
        done = subprocess.run(cmd, env=_cli_env(srv), cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == exitcodes.OK, done.stdout + done.stderr
        assert_exactly_once(srv, expected)
        outcomes = manifest_rows(tmp_path / "manifest.sqlite", "SELECT outcome FROM runs ORDER BY started")
        assert [o for (o,) in outcomes] == ["killed"] * 3 + ["ok"]
        again = subprocess.run(cmd, env=_cli_env(srv), cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert again.returncode == exitcodes.OK
        assert sum(sum(server_docs(srv, u).values()) for u in expected) == 48


async def test_rows_left_uploading_are_reconciled_before_anything_is_sent(
        tmp_path: Path, run_push: Callable[..., Any]) -> None:
    """A crash mid-request leaves rows 'uploading'.  The next run adopts only a document that is provably
    the file (same name and size, created since the intent, same bytes) and sends the others."""
    async with FakeServer() as srv:
        user = srv.add_user()
        folder = tmp_path / "src" / user
        folder.mkdir(parents=True)
        files = {"scan.pdf": b"S" * 700, "notes.txt": b"N" * 500, "old.txt": b"O" * 300}
        for name, data in files.items():
            (folder / name).write_bytes(data)
        write_tokens(tmp_path / "tokens.csv", {user: srv.token_for(user)})
        cfg = write_config(tmp_path, srv)
        now = time.time()
        manifest = Manifest.open(tmp_path / "manifest.sqlite")
        manifest.upsert_push_items("crashed-run", [
            {"user_id": user, "rel_path": name, "size": len(data), "mtime_ns": (folder / name).stat().st_mtime_ns,
             "sha256": sha(data), "state": "uploading", "intent_at": now - 5}
            for name, data in files.items()])
        manifest.close()
        ours = srv.add_file("user", user, "scan.pdf", files["scan.pdf"], created=int(now - 4))   # stored, answer lost
        decoy = srv.add_file("user", user, "notes.txt", b"X" * 500, created=int(now - 4))        # same name+size
        srv.add_file("user", user, "old.txt", files["old.txt"], created=int(now - 3600))          # before the intent

        stats, code = await run_push(srv, cfg)
        assert code == exitcodes.OK
        assert stats.adopted == 1
        assert srv.counters["upload"] == 2  # notes.txt and old.txt; scan.pdf never sent again
        docs = server_docs(srv, user)
        assert docs[("scan.pdf", sha(files["scan.pdf"]))] == 1
        assert docs[("notes.txt", sha(files["notes.txt"]))] == 1 and docs[("notes.txt", sha(b"X" * 500))] == 1
        rows = dict(manifest_rows(tmp_path / "manifest.sqlite",
                                  "SELECT rel_path, remote_id FROM push_items WHERE user_id = ?", user))
        assert rows["scan.pdf"] == ours["id"]
        assert rows["notes.txt"] != decoy["id"]
        adopted = manifest_rows(tmp_path / "manifest.sqlite", "SELECT rel_path FROM push_uploads WHERE adopted = 1")
        assert adopted == [("scan.pdf",)]


# -- tokens, users, limits ---------------------------------------------------------------------------

def test_a_loose_tokens_file_exits_2_and_says_how_to_fix_it(tmp_path: Path) -> None:
    (tmp_path / "src" / "123").mkdir(parents=True)
    tokens = write_tokens(tmp_path / "tokens.csv", {"123": "secret-token-value-123"}, mode=0o644)
    cfg = write_config(tmp_path, None)
    result = CliRunner().invoke(cli_main, ["push", "-c", str(cfg)], env={"VSEE_API_TOKEN": "k" * 16})
    assert result.exit_code == exitcodes.USAGE
    out = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert str(tokens) in out and "chmod 600" in out
    assert "secret-token-value-123" not in out


def test_missing_tokens_file_setting_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    cfg = tmp_path / "syncer.toml"
    cfg.write_text('[push]\nsource = "src"\n')
    result = CliRunner().invoke(cli_main, ["push", "-c", str(cfg)], env={"VSEE_API_TOKEN": "k" * 16})
    assert result.exit_code == exitcodes.USAGE
    assert "tokens" in result.output


async def test_a_user_without_token_is_reported_and_the_others_go_on(
        tmp_path: Path, syncer_records: list[logging.LogRecord], run_push: Callable[..., Any]) -> None:
    async with FakeServer() as srv:
        expected = setup_users(tmp_path, srv, 2, count=5)
        stranger = tmp_path / "src" / "999"
        stranger.mkdir()
        (stranger / "a.txt").write_bytes(b"no token for me")
        (tmp_path / "src" / "not a user!").mkdir()
        (tmp_path / "src" / "not a user!" / "b.txt").write_bytes(b"x")
        stats, code = await run_push(srv, write_config(tmp_path, srv))
        assert code == exitcodes.ITEMS_FAILED, "files left behind must show in the exit code"
        assert_exactly_once(srv, expected)
        # the token-less user's file and the folder not named by a user id: both not uploaded, both failed
        assert stats.files_done == 10 and stats.failed == 2
        assert not [f for f in srv.files() if f["target_id"] == "999"]
    warnings = [r.getMessage() for r in syncer_records if r.levelno >= logging.WARNING]
    assert any("user 999 has no token" in m for m in warnings)
    assert any("is not named by a user id" in m for m in warnings)
    assert not any("not a user!" in m for m in warnings)  # a folder's name may be a patient's


async def test_a_rejected_token_fails_that_users_items_only(
        tmp_path: Path, syncer_records: list[logging.LogRecord], run_push: Callable[..., Any]) -> None:
    async with FakeServer() as srv:
        expected = setup_users(tmp_path, srv, 2, count=5)
        good, bad = list(expected)
        write_tokens(tmp_path / "tokens.csv", {good: srv.token_for(good), bad: "revoked-token-0123456789"})
        stats, code = await run_push(srv, write_config(tmp_path, srv))
        assert code == exitcodes.ITEMS_FAILED
        assert server_docs(srv, good) == expected[good]
        assert not server_docs(srv, bad)
        assert stats.failed == 5 and stats.files_done == 5
        errors = manifest_rows(tmp_path / "manifest.sqlite",
                               "SELECT DISTINCT state, last_error FROM push_items WHERE user_id = ?", bad)
        assert errors == [("failed", f"the token for user {bad} was rejected (401)")]
    texts = [record_text(r) for r in syncer_records]
    assert any(f"the token for user {bad} was rejected (401)" in t for t in texts)
    assert not any("revoked-token-0123456789" in t for t in texts)


async def test_every_token_rejected_stops_the_run_with_exit_3(tmp_path: Path, run_push: Callable[..., Any]) -> None:
    async with FakeServer() as srv:
        expected = setup_users(tmp_path, srv, 2, count=3)
        write_tokens(tmp_path / "tokens.csv", {u: f"revoked-{u}-0123456789" for u in expected})
        stats, code = await run_push(srv, write_config(tmp_path, srv, concurrency=1))
        assert code == exitcodes.FATAL
        assert stats.outcome == "fatal" and "rejected (401)" in (stats.fatal_error or "")
        assert not srv.files()


async def test_a_file_over_the_servers_limit_is_permanent(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, run_push: Callable[..., Any]) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeServer(max_upload_bytes=10_000) as srv:
        expected = setup_users(tmp_path, srv, 1, count=4)
        user = next(iter(expected))
        big = tmp_path / "src" / user / "big scan.pdf"
        big.write_bytes(os.urandom(300_000))
        cfg = write_config(tmp_path, srv)
        stats, code = await run_push(srv, cfg)
        assert code == exitcodes.ITEMS_FAILED
        assert stats.permanent == 1 and stats.failed == 0
        assert server_docs(srv, user) == expected[user]
        assert srv.counters["upload_413"] == 1  # not retried
        (state, error, err_class), = manifest_rows(
            tmp_path / "manifest.sqlite",
            "SELECT state, last_error, error_class FROM push_items WHERE rel_path = 'big scan.pdf'")
        assert state == "permanent" and err_class == "TooLargeError" and "413" in error and "too large" in error
        # The server's message names the file (a patient's document title): neither the log (at any level)
        # nor the manifest's error text holds the server's words; they are only in the failure's event
        # detail, the name taken out.  The row itself says which file it was.
        assert "file larger than" not in error and "big scan" not in error
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "file larger than" not in logged and "big scan" not in logged
        (detail,), = manifest_rows(tmp_path / "manifest.sqlite",
                                   "SELECT detail FROM events WHERE event = 'failed' AND item LIKE '%big scan.pdf'")
        assert "<file name>: file larger than 10000 bytes" in detail and "big scan" not in detail
        # unchanged: not retried; changed (now small enough): uploaded
        stats2, _ = await run_push(srv, cfg)
        assert srv.counters["upload"] == 5 and stats2.files_done == 0
        big.write_bytes(b"smaller now")
        stats3, code3 = await run_push(srv, cfg)
        assert code3 == exitcodes.OK and stats3.files_done == 1
        assert server_docs(srv, user)[("big scan.pdf", sha(b"smaller now"))] == 1


async def test_user_option_limits_the_run(tmp_path: Path, run_push: Callable[..., Any]) -> None:
    async with FakeServer() as srv:
        expected = setup_users(tmp_path, srv, 3, count=3)
        first, *rest = list(expected)
        stats, code = await run_push(srv, write_config(tmp_path, srv), users=(first,))
        assert code == exitcodes.OK
        assert server_docs(srv, first) == expected[first]
        assert all(not server_docs(srv, u) for u in rest)
        stats2, code2 = await run_push(srv, write_config(tmp_path, srv), users=(rest[0], "4242"))
        assert code2 == exitcodes.ITEMS_FAILED  # a user asked for by name has no folder
        assert server_docs(srv, rest[0]) == expected[rest[0]]


# -- changes ---------------------------------------------------------------------------------------

async def test_a_changed_file_is_uploaded_again_and_both_are_recorded(
        tmp_path: Path, run_push: Callable[..., Any]) -> None:
    async with FakeServer() as srv:
        expected = setup_users(tmp_path, srv, 1, count=4)
        user = next(iter(expected))
        path = tmp_path / "src" / user / "letter.txt"
        path.write_bytes(b"version 1")
        cfg = write_config(tmp_path, srv)
        await run_push(srv, cfg)
        path.write_bytes(b"version 2, longer")
        stats, code = await run_push(srv, cfg)
        assert code == exitcodes.OK and stats.files_done == 1
        docs = server_docs(srv, user)
        assert docs[("letter.txt", sha(b"version 1"))] == 1 and docs[("letter.txt", sha(b"version 2, longer"))] == 1
        history = manifest_rows(tmp_path / "manifest.sqlite",
                                "SELECT sha256 FROM push_uploads WHERE rel_path = 'letter.txt' ORDER BY id")
        assert history == [(sha(b"version 1"),), (sha(b"version 2, longer"),)]
        # same size, new content, mtime moved on: still caught by the hash
        path.write_bytes(b"version 3, LONGER")
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
        stats, _ = await run_push(srv, cfg)
        assert stats.files_done == 1
        # touched only: same bytes, new mtime: not uploaded again, the new mtime is remembered
        uploads = srv.counters["upload"]
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 9_000_000_000))
        stats, code = await run_push(srv, cfg)
        assert code == exitcodes.OK and stats.files_done == 0 and srv.counters["upload"] == uploads
        (mtime,), = manifest_rows(tmp_path / "manifest.sqlite",
                                  "SELECT mtime_ns FROM push_items WHERE rel_path = 'letter.txt'")
        assert mtime == path.stat().st_mtime_ns


class ChangingClient(FilesClient):
    """Changes one file just before (or just after) its upload: the file changes while it is sent."""

    target: Path | None = None
    when = "before"
    fired = False

    async def upload(self, path: Path, **kw: Any) -> Any:
        hit = Path(path) == ChangingClient.target and not ChangingClient.fired
        if hit and ChangingClient.when == "before":
            ChangingClient.fired = True
            write_file(Path(path), b"rewritten while uploading, a different size")
        result = await super().upload(path, **kw)
        if hit and ChangingClient.when == "after":
            ChangingClient.fired = True
            write_file(Path(path), b"rewritten right after the upload")
        return result


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_file_that_changes_while_uploading_fails_and_goes_next_run(
        tmp_path: Path, when: str, run_push: Callable[..., Any]) -> None:
    async with FakeServer() as srv:
        expected = setup_users(tmp_path, srv, 1, count=3)
        user = next(iter(expected))
        path = tmp_path / "src" / user / "changing.txt"
        path.write_bytes(b"original bytes")
        ChangingClient.target, ChangingClient.when, ChangingClient.fired = path.resolve(), when, False
        cfg = write_config(tmp_path, srv)
        stats, code = await run_push(srv, cfg, client_factory=ChangingClient)
        assert ChangingClient.fired
        docs = server_docs(srv, user)
        if when == "before":
            # the server got bytes that were never hashed: that copy is deleted and the item fails
            assert code == exitcodes.ITEMS_FAILED and stats.failed == 1
            assert not [k for k in docs if k[0] == "changing.txt"]
            assert srv.counters["delete"] == 1
        else:
            # the stored copy is exactly what was hashed: kept and recorded; the new bytes go next run
            assert code == exitcodes.OK
            assert docs[("changing.txt", sha(b"original bytes"))] == 1
        stats2, code2 = await run_push(srv, cfg)
        assert code2 == exitcodes.OK and stats2.files_done == 1
        docs = server_docs(srv, user)
        assert docs[("changing.txt", sha(path.read_bytes()))] == 1
        assert sum(n for (name, _), n in docs.items() if name == "changing.txt") == (1 if when == "before" else 2)


# -- what is never uploaded ----------------------------------------------------------------------------

async def test_the_manifest_under_source_and_undecodable_names_are_not_uploaded(
        tmp_path: Path, run_push: Callable[..., Any]) -> None:
    async with FakeServer() as srv:
        expected = setup_users(tmp_path, srv, 1, count=3)
        user = next(iter(expected))
        folder = tmp_path / "src" / user
        write_file(os.fsencode(folder) + b"/bad \xff name.txt", b"a name that is not UTF-8")
        cfg = write_config(tmp_path, srv, manifest=f"src/{user}/state.sqlite")
        stats, code = await run_push(srv, cfg)
        assert (folder / "state.sqlite").exists() and (folder / "state.sqlite.lock").exists()
        assert server_docs(srv, user) == expected[user]  # no manifest, wal, lock nor bad name
        assert code == exitcodes.ITEMS_FAILED and stats.permanent == 1


def test_plan_user_skips_without_hashing_and_flags_what_may_be_stored(tmp_path: Path) -> None:
    folder = tmp_path / "u"
    folder.mkdir()
    for name in ("done.txt", "perm.txt", "changed.txt", "new.txt", "pending.txt"):
        (folder / name).write_bytes(name.encode())
    st = {p.name: p.stat() for p in folder.iterdir()}

    def row(name: str, state: str, *, size: int | None = None, intent: float | None = None) -> dict[str, Any]:
        return {"rel_path": name, "size": st[name].st_size if size is None else size,
                "mtime_ns": st[name].st_mtime_ns, "sha256": "x", "state": state, "remote_id": None,
                "attempts": 1, "intent_at": intent}

    rows = {"done.txt": row("done.txt", "done"), "perm.txt": row("perm.txt", "permanent"),
            "changed.txt": row("changed.txt", "done", size=1),
            "pending.txt": row("pending.txt", "failed", intent=123.0),
            "gone.txt": {"rel_path": "gone.txt", "size": 3, "mtime_ns": 1, "sha256": "y", "state": "uploading",
                         "remote_id": None, "attempts": 1, "intent_at": 5.0}}
    plan = plan_user("u", folder, rows)
    assert plan.up_to_date == 1 and plan.held_permanent == 1
    assert [(r["rel_path"], r["state"], r["sha256"]) for r in plan.inserts] == [("new.txt", "pending", None)]
    by_name = {i.rel_path: i for i in plan.items}
    assert set(by_name) == {"changed.txt", "new.txt", "pending.txt", "gone.txt"}
    assert by_name["pending.txt"].reconcile and by_name["gone.txt"].reconcile and by_name["gone.txt"].missing
    assert not by_name["new.txt"].reconcile and not by_name["changed.txt"].reconcile
    assert [i.reconcile for i in plan.items] == sorted((i.reconcile for i in plan.items), reverse=True)


# -- dry run -------------------------------------------------------------------------------------------

def test_dry_run_lists_users_files_bytes_and_sends_nothing(tmp_path: Path, run_push: Callable[..., Any]) -> None:
    srv = FakeServer()
    with srv.run_in_thread():
        expected = setup_users(tmp_path, srv, 2, count=4)
        cfg = write_config(tmp_path, srv)
        result = CliRunner().invoke(cli_main, ["push", "-c", str(cfg), "--dry-run"],
                                    env={"VSEE_API_TOKEN": srv.api_key})
        assert result.exit_code == exitcodes.OK, result.output
        for user in expected:
            assert f"user:{user}\t4 files" in result.output
        assert "total: 2 users, 8 files" in result.output and "nothing sent" in result.output
        assert sum(srv.counters.values()) == 0
        assert not (tmp_path / "manifest.sqlite").exists()
        # after a real run the dry run sees nothing left to do, and leaves the manifest as it was
        asyncio.run(run_push(srv, cfg))
        before = (tmp_path / "manifest.sqlite").stat().st_mtime_ns
        result = CliRunner().invoke(cli_main, ["push", "-c", str(cfg), "--dry-run"],
                                    env={"VSEE_API_TOKEN": srv.api_key})
        assert "total: 2 users, 0 files" in result.output
        assert (tmp_path / "manifest.sqlite").stat().st_mtime_ns == before


def test_cli_push_runs_and_prints_the_summary(tmp_path: Path) -> None:
    srv = FakeServer()
    with srv.run_in_thread():
        expected = setup_users(tmp_path, srv, 2, count=3)
        cfg = write_config(tmp_path, srv)
        result = CliRunner().invoke(cli_main, ["push", "-c", str(cfg), "-q", "--concurrency", "2"],
                                    env={"VSEE_API_TOKEN": srv.api_key})
        assert result.exit_code == exitcodes.OK, result.output
        assert "push ok: 6 files" in result.output
        assert_exactly_once(srv, expected)


# -- refusals -----------------------------------------------------------------------------------------

async def test_400_is_permanent_403_is_retried_next_run(tmp_path: Path, run_push: Callable[..., Any]) -> None:
    from aiohttp import web

    async with FakeServer() as srv:
        expected = setup_users(tmp_path, srv, 1, count=3)
        user = next(iter(expected))
        original, calls = srv._upload, []

        async def scripted(request: web.Request) -> web.StreamResponse:
            calls.append(1)
            if len(calls) <= 2:
                await request.read()
            if len(calls) == 1:
                return web.json_response({"error": {"code": 400, "message": "bad file"}}, status=400)
            if len(calls) == 2:
                return web.json_response({"error": {"code": 403, "message": "not now"}}, status=403)
            return await original(request)

        srv._upload = scripted  # type: ignore[method-assign]
        cfg = write_config(tmp_path, srv, concurrency=1)
        stats, code = await run_push(srv, cfg)
        assert code == exitcodes.ITEMS_FAILED
        assert (stats.permanent, stats.failed, stats.files_done) == (1, 1, 1)
        states = sorted(manifest_rows(tmp_path / "manifest.sqlite",
                                      "SELECT state, error_class, last_error FROM push_items WHERE state != 'done'"))
        assert [(s, c) for s, c, _ in states] == [("failed", "ForbiddenError"), ("permanent", "BadRequestError")]
        assert "(400)" in states[1][2] and "not retried until the file changes" in states[1][2]
        stats2, code2 = await run_push(srv, cfg)
        # The 403 one goes up; the 400 one waits for a change, not sent, but still red (issue 12).
        assert code2 == exitcodes.ITEMS_FAILED and stats2.files_done == 1 and stats2.permanent == 1
        assert len(calls) == 4
        assert sum(server_docs(srv, user).values()) == 2


async def test_a_wrong_base_url_stops_the_run_with_exit_3(tmp_path: Path, run_push: Callable[..., Any]) -> None:
    async with FakeServer() as srv:
        setup_users(tmp_path, srv, 2, count=3)
        cfg = write_config(tmp_path, srv)
        cfg.write_text(cfg.read_text().replace(srv.base_url, srv.origin + "/elsewhere/api_v3"))
        stats, code = await run_push(srv, cfg)
        assert code == exitcodes.FATAL
        assert "api.base_url" in (stats.fatal_error or "")
        assert not srv.files()
        states = manifest_rows(tmp_path / "manifest.sqlite", "SELECT DISTINCT state FROM push_items")
        assert ("permanent",) not in states  # nothing is marked as failed for good by a config mistake
