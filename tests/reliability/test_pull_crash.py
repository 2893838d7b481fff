"""pull as a real process, killed with SIGKILL at several moments, then rerun to completion."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest
from helpers import spawn_syncer, write_config
from reliability_util import final_files, kill_when_done

from syncer.fakeserver import FakeServer, Faults


def test_sigkill_at_several_moments_then_rerun_is_complete_and_intact(tmp_path):
    sizes = (1_000, 20_000, 150_000, 600_000)
    srv = FakeServer(seed=11, users=6, files_per_user=12, visits=2, files_per_visit=4, hostile_names=True,
                     sizes=sizes, faults=Faults(latency_ms=60))
    total_bytes = None
    with srv.run_in_thread():
        total_bytes = sum(f["size"] for f in srv.files())
        cfg = write_config(tmp_path, srv, timeout_connect=5.0, timeout_read=5.0, attempts=8, min_wait=0.01,
                           max_wait=0.05, concurrency=4)
        total = len(srv.files())
        # Each run is killed once the manifest shows the next of these counts done (a fifth, two fifths ...
        # four fifths of the files), whatever this machine's speed: every kill lands mid-run.
        marks = [total * k // 6 for k in range(1, 6)]
        seen = []
        for at_least in marks:
            proc = spawn_syncer(cfg, srv, "pull", "-q")
            seen.append(kill_when_done(proc, tmp_path / "manifest.sqlite", at_least))
            proc.stdout.close()
            proc.stderr.close()
            # Nothing partial ever sits at a final path: every final file is complete.
            by_path = {}
            if (tmp_path / "manifest.sqlite").exists():
                conn = sqlite3.connect(tmp_path / "manifest.sqlite")
                if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'pull_items'").fetchone():
                    by_path = {p: (fid, size) for p, fid, size in
                               conn.execute("SELECT local_path, file_id, size FROM pull_items")}
                conn.close()
            for path in final_files(tmp_path / "backup"):
                rel = path.relative_to(tmp_path / "backup").as_posix()
                assert rel in by_path, f"a file at a final path the manifest does not know: {rel}"
                assert path.read_bytes() == srv.file_bytes(by_path[rel][0]), rel
        kills = len(seen)
        assert seen[-1] < total, seen
        proc = spawn_syncer(cfg, srv, "pull", "-q")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        conn = sqlite3.connect(tmp_path / "manifest.sqlite")
        rows = conn.execute("SELECT file_id, local_path, state FROM pull_items").fetchall()
        conn.close()
        assert len(rows) == len(srv.files())
        for file_id, local_path, state in rows:
            assert state == "done"
            assert (tmp_path / "backup" / local_path).read_bytes() == srv.file_bytes(file_id)
        assert not [p for p in (tmp_path / "backup").rglob(".*")], "temp files left behind"
        # Bytes fetched again are bounded by what was in flight at each kill (concurrency 4 each).
        refetched = srv.counters["view_bytes"] - total_bytes
        assert refetched <= kills * 4 * max(sizes), (refetched, kills)


@pytest.mark.slow
def test_large_file_streams_with_flat_memory(tmp_path):
    size = 256 * 2**20
    srv = FakeServer(seed=12)
    with srv.run_in_thread():
        user = srv.add_user()
        rec = srv.add_file("user", user, "scan.bin", size=size, category="user_document")
        cfg = write_config(tmp_path, srv, manifest="m.sqlite", targets=[f"user:{user}"])
        env = dict(os.environ, VSEE_API_TOKEN=srv.api_key)
        code = ("import resource, subprocess, sys; "
                "r = subprocess.run([sys.executable, '-m', 'syncer', 'pull', '-c', sys.argv[1], '-q']); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
        res = subprocess.run([sys.executable, "-c", code, str(cfg)], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        peak_kib = int(res.stdout.strip().splitlines()[-1])
        assert peak_kib * 1024 < size / 4, f"peak RSS {peak_kib} KiB for a {size} byte file"
        out = tmp_path / "backup" / "user" / user / "user_document" / "scan.bin"
        assert out.stat().st_size == size
        import hashlib

        h = hashlib.sha256()
        with open(out, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        assert h.hexdigest() == rec["sha256"]
