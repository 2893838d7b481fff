"""Bad input from the operator: each mistake gets a message naming the problem, exit 2, and nothing is
written (no manifest, no lock, no backup folder, no upload); a mistake found only once the run has
started (a rejected token) gets exit 3.

Every case runs the real command line (in-process, through click's runner) in a folder whose every file
and folder is recorded before and compared after.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from reliability_util import write_tokens, write_toml

from syncer.cli import main as cli_main
from syncer.fakeserver import FakeServer
from syncer.manifest import SCHEMA_VERSION, Manifest

TOKEN = "k" * 32
NOWHERE = "http://127.0.0.1:9/clinic/api_v3"  # the discard port: nothing may be sent anyway


def tree(root: Path) -> dict[str, tuple]:
    """Every file and folder under root, with what would show a write."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def config(tmp: Path, body: str) -> Path:
    path = tmp / "syncer.toml"
    path.write_text(body, encoding="utf-8")
    return path


GOOD = (f'[api]\nbase_url = "{NOWHERE}"\n[manifest]\npath = "manifest.sqlite"\n'
        f'[pull]\ndest = "backup"\ntargets = ["user:1"]\n')


def invoke(tmp: Path, args: list[str], *, token: str | None = TOKEN) -> tuple[int, str]:
    """Run ``syncer ARGS`` in tmp; assert nothing under tmp changed; return (exit code, all output)."""
    before = tree(tmp)
    old = os.getcwd()
    os.chdir(tmp)
    try:
        result = CliRunner().invoke(cli_main, args, env={"VSEE_API_TOKEN": token, "SYNCER_CONFIG": None})
    finally:
        os.chdir(old)
    after = tree(tmp)
    assert after == before, f"something was written: {set(after) ^ set(before) or 'a file changed'}"
    return result.exit_code, result.output


# -- the config file -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "words"), [
    ("[api\nbase_url = \n", ["not valid TOML", "syncer.toml"]),
    ('[api]\nbase_url = "http://127.0.0.1:9"\nbase_url = "again"\n', ["not valid TOML"]),
    (GOOD + "[pull.extra]\n", ["unknown key pull.extra"]),
    (GOOD + "[backup]\ndest = 1\n", ["unknown section [backup]"]),
    (GOOD.replace('dest = "backup"', 'destination = "backup"'), ["unknown key pull.destination"]),
    (GOOD + "[retry]\nattempts = \"six\"\n", ["retry.attempts must be a whole number", "'six'"]),
    (GOOD + "[retry]\nattempts = 0\n", ["retry.attempts must be at least 1"]),
    (GOOD + "[retry]\nmax_wait = true\n", ["retry.max_wait must be a number"]),
    (GOOD.replace('targets = ["user:1"]', 'targets = "user:1"'), ["pull.targets must be a list of strings"]),
    (GOOD.replace('targets = ["user:1"]', 'targets = ["patient:1"]'), ["type must be one of user, visit"]),
    (GOOD + 'include_shared = "yes"\n', ["pull.include_shared must be true or false"]),
    (GOOD + "concurrency = 100000\n", ["pull.concurrency must be between 1 and 512, not 100000"]),
    (GOOD + 'categories = ["photos"]\n', ["unknown category 'photos'"]),
    (GOOD.replace('dest = "backup"', "dest = 7"), ["pull.dest must be a path"]),
    (GOOD.replace(NOWHERE, "ftp://127.0.0.1/api_v3"), ["is not an http(s) URL"]),
    (GOOD.replace(NOWHERE, "http://files.example.com/api_v3"), ["plain http is allowed only"]),
    (GOOD.replace(NOWHERE, "https://u:p@files.example.com/api_v3"), ["must not carry a query string or credentials"]),
    (GOOD + "[api]\ntimeout_read = 0\n", ["not valid TOML"]),  # [api] twice
    (GOOD.replace("[manifest]", "timeout_read = -1\n[manifest]"), ["api.timeout_read must be greater than 0"]),
    (GOOD + '[log]\nformat = "xml"\n', ["log.format must be 'text' or 'json'"]),
    ("pull = 3\n", ["pull must be a table"]),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None)
def test_a_bad_config_is_exit_2_naming_the_problem(tmp_path: Path, body: str, words: list[str]) -> None:
    cfg = config(tmp_path, body)
    code, out = invoke(tmp_path, ["pull", "-c", str(cfg)])
    assert code == 2, out
    for w in words:
        assert w in out, out


def test_a_config_file_that_is_not_utf8_is_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "syncer.toml"
    cfg.write_bytes(b"[api]\nbase_url = \"\xff\xfe\"\n")
    code, out = invoke(tmp_path, ["pull", "-c", str(cfg)])
    assert code == 2 and "cannot read it" in out, out


def test_a_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    code, out = invoke(tmp_path, ["pull", "-c", str(tmp_path / "nope.toml")])
    assert code == 2 and "nope.toml does not exist" in out, out


def test_a_missing_token_variable_is_exit_2_naming_it(tmp_path: Path) -> None:
    cfg = config(tmp_path, GOOD + '[api]\n'.replace("[api]\n", "") )
    code, out = invoke(tmp_path, ["pull", "-c", str(cfg)], token=None)
    assert code == 2 and "export VSEE_API_TOKEN=" in out, out
    cfg = config(tmp_path, GOOD.replace("[api]\n", '[api]\ntoken_env = "CLINIC_KEY"\n'))
    code, out = invoke(tmp_path, ["pull", "-c", str(cfg)], token=None)
    assert code == 2 and "export CLINIC_KEY=" in out, out


@pytest.mark.parametrize(("args", "words"), [
    (["--shard", "2/2"], "need 0 <= K < N"),
    (["--shard", "x"], "is not K/N"),
    (["--target", "user"], "is not TYPE:ID"),
    (["--target", "user:../../etc"], "characters an id cannot have"),
    (["--concurrency", "0"], "pull.concurrency must be between 1 and 512, not 0"),
    (["--category", "photos"], "Invalid value for '--category'"),
])
def test_bad_flags_are_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    cfg = config(tmp_path, GOOD)
    code, out = invoke(tmp_path, ["pull", "-c", str(cfg), *args])
    assert code == 2 and words in out, out


# -- the destination ---------------------------------------------------------------------------------------

def test_a_dest_that_is_a_file_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "backup").write_text("not a folder")
    cfg = config(tmp_path, GOOD)
    code, out = invoke(tmp_path, ["pull", "-c", str(cfg)])
    assert code == 2 and "backup is not a folder" in out, out


def test_a_dest_below_a_file_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "disk").write_text("a file")
    cfg = config(tmp_path, GOOD.replace('dest = "backup"', 'dest = "disk/backup"'))
    code, out = invoke(tmp_path, ["pull", "-c", str(cfg)])
    assert code == 2 and "disk is a file, not a folder" in out, out


def test_a_dest_on_a_read_only_file_system_is_exit_2(tmp_path: Path) -> None:
    vol = tmp_path / "ro"
    vol.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(vol)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        cfg = config(tmp_path, GOOD.replace('dest = "backup"', 'dest = "ro/backup"'))
        code, out = invoke(tmp_path, ["pull", "-c", str(cfg)])
        assert code == 2 and "is not writable" in out and "Read-only file system" in out, out
    finally:
        subprocess.run(["umount", "-l", str(vol)], capture_output=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: permission bits do not stop it")
def test_a_dest_without_write_permission_is_exit_2(tmp_path: Path) -> None:  # pragma: no cover - non-root only
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    cfg = config(tmp_path, GOOD.replace('dest = "backup"', 'dest = "locked/backup"'))
    code, out = invoke(tmp_path, ["pull", "-c", str(cfg)])
    assert code == 2 and "Permission denied" in out, out


# -- the targets file --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "words"), [
    (b"user:1\n# fine\n\nthis is not a target\n", "targets.txt:4: target 'this is not a target' is not TYPE:ID"),
    (b"user:1\nvisit:\n", "targets.txt:2:"),
    (b"user:1\ngroup:7\n", "targets.txt:2: target 'group:7': type must be one of user, visit"),
    (b"target_type,target_id\nuser,1\nuser,2,extra\n", "targets.txt:3: expected 2 columns"),
    (b"user:1\n\xff\xfe\x00garbage\n", "not UTF-8 text"),
    (b"user:1\nuser:a\x07b\n", "targets.txt:2:"),
])
def test_a_targets_file_with_garbage_is_exit_2_naming_the_line(tmp_path: Path, content: bytes, words: str) -> None:
    (tmp_path / "targets.txt").write_bytes(content)
    cfg = config(tmp_path, GOOD)
    code, out = invoke(tmp_path, ["pull", "-c", str(cfg), "--targets-file", "targets.txt"])
    assert code == 2 and words in out, out


def test_a_missing_targets_file_is_exit_2(tmp_path: Path) -> None:
    cfg = config(tmp_path, GOOD)
    code, out = invoke(tmp_path, ["pull", "-c", str(cfg), "--targets-file", "nope.txt"])
    assert code == 2 and "nope.txt does not exist" in out, out


# -- the manifest ------------------------------------------------------------------------------------------

def newer_manifest(path: Path) -> None:
    Manifest.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()


def foreign_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE appointments (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(("make", "words"), [
    (lambda p: p.write_text("id,name\n1,Jane\n" * 100), "is not a syncer manifest (not an SQLite database"),
    (newer_manifest, f"written by a newer syncer (schema {SCHEMA_VERSION + 5}, this one knows {SCHEMA_VERSION})"),
    (foreign_db, "is an SQLite database but not a syncer manifest"),
], ids=["not-sqlite", "newer-schema", "foreign-sqlite"])
@pytest.mark.parametrize("command", ["pull", "push", "status", "verify"])
def test_a_manifest_that_cannot_be_used_is_exit_2_and_left_alone(tmp_path: Path, make, words: str,
                                                                 command: str) -> None:
    make(tmp_path / "manifest.sqlite")
    (tmp_path / "src" / "1").mkdir(parents=True)
    write_tokens(tmp_path / "tokens.csv", {"1": "t" * 32})
    cfg = write_toml(tmp_path, None, targets=["user:1"])
    text = cfg.read_text().replace("[api]\n", f'[api]\nbase_url = "{NOWHERE}"\n')
    cfg.write_text(text)
    args = [command, "-c", str(cfg)] + (["--all"] if command == "verify" else [])
    code, out = invoke(tmp_path, args)
    assert code == 2, out
    assert words in out and "manifest.sqlite" in out, out


# -- the tokens file (push) ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "mode", "words"), [
    ("user_id,token\n1,secret-token-0001\n", 0o644, "accessible by group or others (mode 0644)"),
    ("user_id,token\n1,secret-token-0001\n", 0o604, "chmod 600"),
    ("id,secret\n1,secret-token-0001\n", 0o600, "the first line must be the header 'user_id,token'"),
    ("1,secret-token-0001\n", 0o600, "the first line must be the header"),
    ("user_id,token\n1,secret-token-0001,extra\n", 0o600, "tokens.csv:2: expected 2 columns"),
    ("user_id,token\n../1,secret-token-0001\n", 0o600, "tokens.csv:2: the user id is not an id"),
    ("user_id,token\n1,secret-token-0001\n1,secret-token-0002\n", 0o600, "tokens.csv:3: user 1 appears twice"),
    ("", 0o600, "empty"),
])
def test_a_bad_tokens_file_is_exit_2_and_nothing_is_sent(tmp_path: Path, content: str, mode: int,
                                                          words: str) -> None:
    srv = FakeServer(seed=601)
    with srv.run_in_thread():
        user = srv.add_user("1")
        (tmp_path / "src" / user).mkdir(parents=True)
        (tmp_path / "src" / user / "scan.pdf").write_bytes(b"%PDF-1.4 scan")
        tokens = tmp_path / "tokens.csv"
        tokens.write_text(content, encoding="utf-8")
        os.chmod(tokens, mode)
        cfg = write_toml(tmp_path, srv)
        code, out = invoke(tmp_path, ["push", "-c", str(cfg)], token=srv.api_key)
        assert code == 2 and words in out, out
        assert "secret-token" not in out, "a token was printed"
        assert sum(srv.counters.values()) == 0, dict(srv.counters)


def test_a_missing_tokens_file_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    cfg = write_toml(tmp_path, None, tokens="nope.csv")
    code, out = invoke(tmp_path, ["push", "-c", str(cfg)])
    assert code == 2 and "nope.csv does not exist" in out, out


def test_a_missing_push_source_is_exit_2(tmp_path: Path) -> None:
    write_tokens(tmp_path / "tokens.csv", {"1": "t" * 32})
    cfg = write_toml(tmp_path, None, source="nowhere")
    code, out = invoke(tmp_path, ["push", "-c", str(cfg)])
    assert code == 2 and "nowhere is not a folder" in out, out


# -- found once the run has started: exit 3 ---------------------------------------------------------------------

def test_a_rejected_token_is_exit_3_and_the_run_is_recorded_fatal(tmp_path: Path) -> None:
    srv = FakeServer(seed=602, users=2, files_per_user=3)
    with srv.run_in_thread():
        cfg = write_toml(tmp_path, srv)
        result = CliRunner().invoke(cli_main, ["pull", "-c", str(cfg), "-q"],
                                    env={"VSEE_API_TOKEN": "wrong-key-" + "x" * 20, "SYNCER_CONFIG": None})
        assert result.exit_code == 3, result.output
        assert "stopped:" in result.output and "401" in result.output and "the token was rejected" in result.output
        assert "wrong-key" not in result.output
        assert srv.counters["view"] == 0
        conn = sqlite3.connect(tmp_path / "manifest.sqlite")
        assert conn.execute("SELECT outcome FROM runs").fetchall() == [("fatal",)]
        assert conn.execute("SELECT count(*) FROM pull_items").fetchone() == (0,)
        conn.close()
        assert not [p for p in (tmp_path / "backup").rglob("*") if p.is_file()]


# -- targets whose folders look alike ----------------------------------------------------------------------------

@pytest.mark.parametrize("ids", [("a:b", "a_b"), ("AbC", "abc"), ("caf\u00e9", "cafe\u0301")],
                         ids=["sanitised-alike", "case-twins", "nfc-nfd-twins"])
async def test_targets_whose_folders_collide_never_share_a_path(tmp_path: Path, ids: tuple[str, str]) -> None:
    """Two targets whose ids become the same folder (after sanitising, case folding or NFC), each with a
    file of the same name: both files are backed up, to two paths, and the run does not crash."""
    from reliability_util import audit_pull, pull_cfg, run_pull

    from syncer.models import Target

    async with FakeServer(seed=603) as srv:
        for tid in ids:
            srv.add_file("user", tid, "scan.pdf", f"the scan of {tid}".encode() * 20)
        cfg = pull_cfg(srv, tmp_path)
        targets = tuple(Target("user", t) for t in ids)
        stats, code = await run_pull(srv, cfg, targets=targets)
        assert code == 0, stats
        audit = audit_pull(srv, cfg.manifest.path, cfg.pull.dest)
        assert audit.clean and audit.files == 2, audit.summary()
        stats, code = await run_pull(srv, cfg, targets=targets)  # and the next run agrees
        assert code == 0 and stats.files_done == 0 and stats.skipped == 2
