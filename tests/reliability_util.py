"""Shared helpers of the reliability suite (tests/reliability/): servers, configs, runs, and the
checks that prove a backup or an upload is complete, byte-exact and free of duplicates.

Every check compares against the built-in server's own records (``srv.files()``, ``srv.file_bytes``),
never against the manifest alone, so a file the manifest believes in but the disk lacks, or a document
stored twice, cannot hide.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import MAX_WAIT, MIN_WAIT, all_targets, pull_config, write_config, write_tokens  # noqa: F401 (re-exported)
from helpers import pull as run_pull  # noqa: F401 (re-exported: the suite's name for helpers.pull)

from syncer.config import ApiConfig, Config, ManifestConfig, PushConfig, RetryConfig
from syncer.fakeserver import FakeServer
from syncer.manifest import Manifest


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- pull ---------------------------------------------------------------------------------------------

def pull_cfg(srv: FakeServer, tmp: Path, *, attempts: int = 10, concurrency: int = 16, **kw: Any) -> Config:
    """helpers.pull_config with this suite's defaults (more tries, more workers)."""
    return pull_config(srv, tmp, attempts=attempts, concurrency=concurrency, **kw)


def query(manifest: Path, sql: str, *args: Any) -> list[tuple]:
    conn = sqlite3.connect(manifest)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def pull_rows(manifest: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(manifest)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM pull_items")]
    finally:
        conn.close()


def final_files(dest: Path) -> list[Path]:
    """Every file at a final path (hidden temp files excluded)."""
    return [Path(d) / f for d, _, fs in os.walk(dest) for f in fs if not f.startswith(".")]


def temp_files(dest: Path) -> list[Path]:
    return [Path(d) / f for d, _, fs in os.walk(dest) for f in fs if f.startswith(".")]


@dataclass
class PullAudit:
    """What a backup holds, measured against the server."""

    files: int = 0
    bytes: int = 0
    lost: list[str] = field(default_factory=list)        # server files not backed up
    corrupt: list[str] = field(default_factory=list)     # backed up with other bytes
    duplicates: list[str] = field(default_factory=list)  # a file id twice, or final files no row explains
    temps: list[str] = field(default_factory=list)       # partial files left behind

    @property
    def clean(self) -> bool:
        return not (self.lost or self.corrupt or self.duplicates)

    def summary(self) -> str:
        return (f"files={self.files} bytes={self.bytes} lost={len(self.lost)} corrupt={len(self.corrupt)} "
                f"duplicates={len(self.duplicates)} temps={len(self.temps)}: "
                f"{(self.lost + self.corrupt + self.duplicates + self.temps)[:5]}")


def audit_pull(srv: FakeServer, manifest: Path, dest: Path, *, file_ids: set[str] | None = None) -> PullAudit:
    """Every server file (of ``file_ids``, default all) exactly once in the manifest, state done, at its
    recorded path with the server's bytes and the recorded sha256; no final file the manifest does not
    name; no file outside dest."""
    audit = PullAudit()
    wanted = {f["id"]: f for f in srv.files() if file_ids is None or f["id"] in file_ids}
    rows = pull_rows(manifest) if manifest.exists() else []
    seen: Counter[str] = Counter(r["file_id"] for r in rows)
    audit.duplicates += [f"file id {fid} has {n} rows" for fid, n in seen.items() if n > 1]
    real_dest = dest.resolve()
    by_id = {r["file_id"]: r for r in rows}
    for fid in wanted:
        row = by_id.get(fid)
        if row is None or row["state"] != "done":
            audit.lost.append(f"{fid}: {row['state'] if row else 'no row'}")
            continue
        path = (dest / row["local_path"]).resolve()
        if not path.is_relative_to(real_dest) or not path.is_file():
            audit.lost.append(f"{fid}: nothing at {row['local_path']}")
            continue
        data = path.read_bytes()
        if data != srv.file_bytes(fid) or row["sha256"] != sha(data):
            audit.corrupt.append(f"{fid}: {len(data)} bytes at {row['local_path']}")
            continue
        if stat.S_IMODE(path.stat().st_mode) != 0o600:
            audit.corrupt.append(f"{fid}: mode {oct(path.stat().st_mode)}")
        audit.files += 1
        audit.bytes += len(data)
    known = {(dest / r["local_path"]).resolve() for r in rows}
    for path in final_files(dest):
        if path.resolve() not in known:
            audit.duplicates.append(f"unexplained final file {path.relative_to(dest)}")
    audit.temps = [str(p.relative_to(dest)) for p in temp_files(dest) if p.name != ".syncer-write-test"]
    return audit


def check_final_paths(srv: FakeServer, manifest: Path, dest: Path) -> list[str]:
    """After a crash: every file at a final path is complete (the bytes of the file its row names).
    Returns the problems found."""
    problems = []
    by_path: dict[str, str] = {}
    if manifest.exists():
        try:
            conn = sqlite3.connect(manifest, timeout=10)
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'pull_items'").fetchone():
                by_path = dict(conn.execute("SELECT local_path, file_id FROM pull_items"))
            conn.close()
        except sqlite3.DatabaseError as exc:
            return [f"the manifest cannot be read: {exc}"]
    for path in final_files(dest):
        rel = path.relative_to(dest).as_posix()
        if rel not in by_path:
            problems.append(f"a final file the manifest does not know: {rel}")
        elif path.read_bytes() != srv.file_bytes(by_path[rel]):
            problems.append(f"a partial or wrong file at a final path: {rel}")
    return problems


def integrity_ok(manifest: Path) -> bool:
    conn = sqlite3.connect(manifest)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


# -- configs and processes ----------------------------------------------------------------------------

def write_toml(tmp: Path, srv: FakeServer | None, *, attempts: int = 10, concurrency: int = 8,
               manifest: str = "manifest.sqlite", dest: str = "backup", targets: list[str] | None = None,
               source: str = "src", tokens: str = "tokens.csv", push_concurrency: int = 8,
               timeout_read: float = 5.0, name: str = "syncer.toml") -> Path:
    """``helpers.write_config`` with this suite's settings: 5 s timeouts, fast retries, a ``[push]`` section."""
    return write_config(tmp, srv, timeout_connect=5, timeout_read=timeout_read, manifest=manifest,
                        attempts=attempts, min_wait=MIN_WAIT, max_wait=MAX_WAIT, dest=dest, concurrency=concurrency,
                        targets=targets, push_source=source, push_tokens=tokens, push_concurrency=push_concurrency,
                        name=name)


def cli_env(token: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("SYNCER_CONFIG", None)
    env.pop("VSEE_API_TOKEN", None)
    if token is not None:
        env["VSEE_API_TOKEN"] = token
    return env


def syncer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "syncer", *args]


def run_cli(args: list[str], *, cwd: Path, token: str | None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(syncer_cmd(*args), env=cli_env(token), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def start_cli(args: list[str], *, cwd: Path, token: str | None) -> subprocess.Popen:
    return subprocess.Popen(syncer_cmd(*args), env=cli_env(token), cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def done_count(manifest: Path, table: str = "pull_items") -> int:
    """Rows of ``table`` recorded done, read as another reader would (0 while there is no such table)."""
    if not manifest.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{manifest}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(f"SELECT count(*) FROM {table} WHERE state = 'done'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet, or being created
        return 0


def kill_when_done(proc: subprocess.Popen, manifest: Path, at_least: int, *, table: str = "pull_items",
                   deadline: float = 120.0) -> int:
    """SIGKILL ``proc`` as soon as its manifest records ``at_least`` rows of ``table`` done: a kill timed by the
    run's own progress, not by the clock.  Fails the test if the run ends first or the deadline passes.
    Returns the count seen just before the kill."""
    end = time.monotonic() + deadline
    while (seen := done_count(manifest, table)) < at_least:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) at {seen} done, before {at_least}"
        assert time.monotonic() < end, f"{seen} done after {deadline} s, waiting for {at_least}"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended by itself (exit {proc.returncode}) before the kill"
    return seen


# -- push ---------------------------------------------------------------------------------------------

def push_cfg(srv: FakeServer, tmp: Path, *, attempts: int = 10, concurrency: int = 8) -> Config:
    return Config(
        api=ApiConfig(base_url=srv.base_url, account_code=srv.account_code, timeout_connect=5, timeout_read=10),
        manifest=ManifestConfig(path=tmp / "manifest.sqlite"),
        retry=RetryConfig(attempts=attempts, max_wait=MAX_WAIT, min_wait=MIN_WAIT),
        push=PushConfig(source=tmp / "src", tokens_file=tmp / "tokens.csv", concurrency=concurrency),
    )


def build_push_source(tmp: Path, srv: FakeServer, users: int, files_per_user: int, *, seed: int,
                      sizes: tuple[int, ...] = (0, 1, 700, 5_000, 40_000)) -> dict[str, Counter[tuple[str, str]]]:
    """``users`` new server users, each with a folder of ``files_per_user`` files (nested folders, one
    base name used twice, unicode names); a 0600 tokens file.  Returns the expected documents per user
    as Counters of (name, sha256)."""
    rng = random.Random(seed)
    expected: dict[str, Counter[tuple[str, str]]] = {}
    for _ in range(users):
        user = srv.add_user()
        want: Counter[tuple[str, str]] = Counter()
        for j in range(files_per_user):
            sub = ["", "scans", "scans/2024", "ä/ö"][j % 4]
            name = "same name.txt" if j in (1, 2) else f"{['résumé', '報告', 'scan', 'notes'][j % 4]} {j}.pdf"
            data = rng.randbytes(sizes[j % len(sizes)]) if j not in (1, 2) else f"copy {j}".encode()
            path = tmp / "src" / user / sub / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            want[(name, sha(data))] += 1
        expected[user] = want
    write_tokens(tmp / "tokens.csv", {u: srv.token_for(u) for u in expected})
    return expected


@dataclass
class PushAudit:
    files: int = 0
    bytes: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)     # a stored document whose bytes match no local file

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicates or self.corrupt)

    def summary(self) -> str:
        return (f"files={self.files} bytes={self.bytes} lost={len(self.lost)} duplicates={len(self.duplicates)} "
                f"corrupt={len(self.corrupt)}: {(self.lost + self.duplicates + self.corrupt)[:5]}")


def audit_push(srv: FakeServer, expected: dict[str, Counter[tuple[str, str]]]) -> PushAudit:
    """Each user's stored documents, re-hashed from the server's bytes, against what was to be uploaded."""
    audit = PushAudit()
    for user, want in expected.items():
        got: Counter[tuple[str, str]] = Counter()
        for f in srv.files():
            if f["target_type"] == "user" and f["target_id"] == user:
                data = srv.file_bytes(f["id"])
                if sha(data) != f["sha256"]:
                    audit.corrupt.append(f"{user}: {f['id']} stored bytes differ from their hash")
                got[(f["name"], sha(data))] += 1
        for key, n in want.items():
            if got[key] < n:
                audit.lost.append(f"{user}: {key[0]!r} x{n - got[key]}")
            audit.files += min(n, got[key])
        for key, n in got.items():
            extra = n - want.get(key, 0)
            if extra > 0:  # the same document twice; or bytes that match no local file
                (audit.duplicates if key in want else audit.corrupt).append(f"{user}: {key[0]!r} x{extra}")
    audit.bytes = sum(len(srv.file_bytes(f["id"])) for f in srv.files()
                      if f["target_type"] == "user" and f["target_id"] in expected)
    return audit


# -- manifest batches (tests/unit/test_manifest.py, tests/reliability/test_manifest_kill.py) --------------

def seed_batch_manifest(path: Path, n: int) -> None:
    m = Manifest.open(path)
    try:
        rows = [{"target_type": "user", "target_id": str(i % 100), "file_id": f"f{i}", "local_path": f"p/{i}",
                 "path_key": f"p/{i}", "state": "pending", "size": i, "category": None, "remote_name": "n",
                 "created": None, "modified": None, "ext": "", "owner_id": None} for i in range(n)]
        m.apply_pull_listing("seed-run", rows, [], [])
    finally:
        m.close()


def batch_counts(path: Path) -> tuple[int, int, int, str]:
    """(rows done, rows whose attempts were bumped, 'done' events, integrity check)."""
    conn = sqlite3.connect(path)
    try:
        done = conn.execute("SELECT count(*) FROM pull_items WHERE state = 'done'").fetchone()[0]
        bumped = conn.execute("SELECT count(*) FROM pull_items WHERE attempts = 1").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM events WHERE event = 'done'").fetchone()[0]
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        return done, bumped, events, check
    finally:
        conn.close()
