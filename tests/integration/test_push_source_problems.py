"""Push never skips a file silently (issue 12, defect 2).

What under the source cannot be uploaded -- a user folder that is a symlink, a folder not named by a user
id, a file directly under the source root, a sub-folder that cannot be read, a user with no token -- is
counted as failed (exit 1), a warning, listed by the dry run and by ``status`` (text and JSON), and named
only by its place ("folder #3 of the source root") and a hash: the names, which may be patients' names,
appear only in the 0600 manifest.  Runs as a real ``python -m syncer`` process against the built-in server;
as root, without the capabilities that let root read a mode-000 folder.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from helpers import write_config

from syncer.fakeserver import FakeServer

NAMES = ("Jane Roe", "John Doe", "Mary Major.pdf", "Private Smith")  # what must never be printed


def syncer(cfg: Path, srv: FakeServer, *args: str) -> subprocess.CompletedProcess[str]:
    """``syncer ARGS -c CFG`` as a process that obeys file modes even as root (no CAP_DAC_*)."""
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    env = {**os.environ, "VSEE_API_TOKEN": srv.api_key, "SYNCER_CONFIG": "", "SYNCER_MANIFEST": ""}
    return subprocess.run([*prefix, sys.executable, "-m", "syncer", *args, "-c", str(cfg)], env=env,
                          cwd=cfg.parent, capture_output=True, text=True, timeout=120)


def assert_no_names(*texts: str) -> None:
    for text in texts:
        for name in NAMES:
            assert name not in text, f"{name!r} printed: {text[-1500:]}"


def test_what_push_cannot_upload_is_counted_listed_and_never_named(tmp_path: Path) -> None:
    srv = FakeServer(users=0, visits=0)
    with srv.run_in_thread():
        good, tokenless = srv.add_user(), srv.add_user()
        src = tmp_path / "src"
        for user in (good, tokenless):
            (src / user).mkdir(parents=True)
            (src / user / "a.txt").write_bytes(b"a" * 10)
            (src / user / "b.txt").write_bytes(b"b" * 20)
        (src / "Jane Roe").mkdir()
        (src / "Jane Roe" / "scan.pdf").write_bytes(b"not a user id")
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "c.txt").write_bytes(b"behind a link")
        os.symlink(tmp_path / "elsewhere", src / "John Doe")
        (src / "Mary Major.pdf").write_bytes(b"beside the user folders")
        (src / ".DS_Store").write_bytes(b"hidden: not anyone's, not a problem")
        locked = src / good / "Private Smith"
        locked.mkdir()
        (locked / "d.txt").write_bytes(b"cannot be read")
        os.chmod(locked, 0)
        (tmp_path / "tokens.csv").write_text(f"user_id,token\n{good},{srv.token_for(good)}\n", encoding="utf-8")
        os.chmod(tmp_path / "tokens.csv", 0o600)
        cfg = write_config(tmp_path, srv, targets=[], push_source="src")
        order = sorted(p.name for p in src.iterdir() if not p.name.startswith("."))
        number = {name: order.index(name) + 1 for name in order}
        try:
            dry = syncer(cfg, srv, "push", "--dry-run")
            assert dry.returncode == 1, dry.stdout + dry.stderr
            for line in (f"folder #{number['Jane Roe']} of the source root", "not named by a user id",
                         f"entry #{number['John Doe']} of the source root", "symbolic link",
                         f"file #{number['Mary Major.pdf']} of the source root", "not inside a user folder",
                         f"user {tokenless} has no token", f"user {good}: a sub-folder", "cannot be read"):
                assert line in dry.stderr, (line, dry.stderr)
            assert "5 entries of the source would not be uploaded" in dry.stdout
            assert sum(srv.counters.values()) == 0
            assert_no_names(dry.stdout, dry.stderr)

            run = syncer(cfg, srv, "push")
            assert run.returncode == 1, run.stdout + run.stderr
            # failed: the 3 root entries, the unreadable folder, the token-less user's 2 files
            assert "push failed: 2 files" in run.stdout and "6 failed" in run.stdout, run.stdout
            warnings = [line for line in run.stderr.splitlines() if " WARNING " in line]
            assert len(warnings) == 5, run.stderr
            assert_no_names(run.stdout, run.stderr)
            assert sorted(f["name"] for f in srv.files()) == ["a.txt", "b.txt"]

            text = syncer(cfg, srv, "status")
            doc = json.loads(syncer(cfg, srv, "status", "--json").stdout)
        finally:
            os.chmod(locked, 0o700)
        assert_no_names(text.stdout, json.dumps(doc))
        for header in ("push sources that are not named by a user id (1)", "push sources that are symbolic links",
                       "push sources that are files outside any user folder (1)",
                       "push folders that cannot be read (1)", "push users that have no token in the tokens file (1)"):
            assert header in text.stdout, text.stdout
        assert f"folder #{number['Jane Roe']} of the source root" in text.stdout
        reasons = sorted((f["scope"], f["reason"]) for f in doc["scope_failures"])
        assert reasons == [("folder", "unreadable"), ("source", "file_in_root"), ("source", "not_a_user_id"),
                           ("source", "symlink_folder"), ("user", "no_token")]
        assert {f["scope_id"] for f in doc["scope_failures"] if f["scope"] == "user"} == {tokenless}
        # the names are in the manifest only (0600), for whoever must find the folders
        manifest = tmp_path / "manifest.sqlite"
        assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
        with sqlite3.connect(manifest) as conn:
            recorded = {r[0] for r in conn.execute("SELECT detail FROM events WHERE kind = 'push'"
                                                   " AND (event LIKE 'source_%' OR event LIKE 'folder_%')")}
        assert {"Jane Roe", "John Doe", "Mary Major.pdf", "Private Smith"} <= recorded

        # every cause fixed: the next run uploads the rest, exits 0, and status no longer lists them
        (src / "John Doe").unlink()
        (src / "Mary Major.pdf").rename(src / good / "Mary Major.pdf")
        os.rename(src / "Jane Roe", tmp_path / "elsewhere" / "Jane Roe")
        (tmp_path / "tokens.csv").write_text(f"user_id,token\n{good},{srv.token_for(good)}\n"
                                             f"{tokenless},{srv.token_for(tokenless)}\n", encoding="utf-8")
        fixed = syncer(cfg, srv, "push")
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert json.loads(syncer(cfg, srv, "status", "--json").stdout)["scope_failures"] == []
        assert sorted(f["name"] for f in srv.files()) == ["Mary Major.pdf", "a.txt", "a.txt", "b.txt", "b.txt",
                                                           "d.txt"]


def test_our_own_files_in_the_source_root_are_not_problems(tmp_path: Path) -> None:
    """The config, the tokens file and the manifest may sit in the source root: not a stray file each run."""
    srv = FakeServer(users=0, visits=0)
    with srv.run_in_thread():
        user = srv.add_user()
        (tmp_path / user).mkdir()
        (tmp_path / user / "a.txt").write_bytes(b"a")
        (tmp_path / "tokens.csv").write_text(f"user_id,token\n{user},{srv.token_for(user)}\n", encoding="utf-8")
        os.chmod(tmp_path / "tokens.csv", 0o600)
        cfg = write_config(tmp_path, srv, targets=[], push_source=".", manifest="state.sqlite")
        for args in (("push", "--dry-run"), ("push",), ("push",)):
            result = syncer(cfg, srv, *args)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "WARNING" not in result.stderr and "not uploaded" not in result.stderr
        assert [f["name"] for f in srv.files()] == ["a.txt"]
