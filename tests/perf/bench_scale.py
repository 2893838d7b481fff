"""Benchmark (c): the manifest at scale.  ``run_bench.py`` runs it as a subprocess; it can run alone too:

    /work/.venv/bin/python tests/perf/bench_scale.py --rows 200000 --targets 2000 --workdir /tmp/x

Measures, with the real code and no network (the network is what (a) measures):

1. record_listing_s: a first run's listing step for every target: ``plan_and_record`` (the
   target's rows, the paths other targets hold, the plan, and its record: 200,000 new pending rows
   and their events).
2. record_outcomes_s: 200,000 "done" outcomes through the run's ``Recorder`` (the exact ``Update`` that
   ``PullJob._fetch`` puts), from the first ``put`` until ``close()`` has committed them all.  All
   outcomes arrive at once here: the recorder's throughput, not a download's pace.
3. status_s: ``python -m syncer status -c CFG`` as an operator runs it (median of 3), and with --json.
4. rerun_plan_s: a do-nothing rerun through ``runner.execute`` + ``PullJob`` (lock, manifest, run row,
   listing of every target at LIST_CONCURRENCY, planning with a stat per done file, recording) with a
   stub client that returns each target's listing instantly.  Every local file exists (sparse, right
   size), so nothing is to be fetched; the run checks that.  Median of 3.

Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from syncer import config as config_mod
from syncer.api.client import Listing
from syncer.manifest import Manifest, Recorder, Update, now_iso
from syncer.models import PullState, RemoteFile, Target
from syncer.pull.job import PullJob
from syncer.pull.options import PullOptions
from syncer.pull.plan import plan_and_record
from syncer.run.runner import execute


def make_listings(rows: int, targets: int) -> dict[Target, list[RemoteFile]]:
    per = rows // targets
    out = {}
    for t in range(targets):
        tid = f"{2317820000 + t}"
        out[Target("user", tid)] = [
            RemoteFile(id=f"{t:05d}{i:06d}-aaaa-bbbb-cccc-dddddddddddd", name=f"document {i}.pdf",
                       size=40_000 + i, ext="pdf", fullpath=f"http://127.0.0.1:9/clinic/files/view/{t}-{i}?auth_code=x",
                       category="user_document", meta_target_type="user", meta_target_id=tid, owner_id=tid,
                       created=1_700_000_000 + i, modified=1_700_000_000 + i, is_deletable=True)
            for i in range(per)]
    return out


def record(mpath: Path, dest: Path, listings: dict[Target, list[RemoteFile]]) -> dict[str, float]:
    m = Manifest.open(mpath)
    try:
        run_id = m.start_run("pull", {"targets": len(listings)})
        items = []
        t0 = time.perf_counter()
        for target, files in listings.items():
            plan = plan_and_record(m, run_id, target, files, dest=dest)
            items.extend(plan.todo)
        t_listing = time.perf_counter() - t0

        async def outcomes() -> float:
            async with Recorder(m, run_id) as rec:
                t1 = time.perf_counter()
                for item in items:
                    rec.put(Update("pull_items", item.key,
                                   {"state": PullState.DONE.value, "sha256": "ab" * 32, "bytes": item.size,
                                    "done_at": now_iso(), "last_error": None, "error_class": None},
                                   event="done", bump_attempts=True))
                await rec.close()
                return time.perf_counter() - t1

        t_outcomes = asyncio.run(outcomes())
        m.finish_run(run_id, "ok", {"files_done": len(items)})
        done = m.conn.execute("SELECT count(*) FROM pull_items WHERE state = 'done'").fetchone()[0]
        assert done == len(items), (done, len(items))
    finally:
        m.close()
    return {"record_listing_s": t_listing, "record_outcomes_s": t_outcomes, "rows": len(items)}


def make_local_files(mpath: Path, dest: Path) -> float:
    """Every recorded file present at its local path with its size (sparse: no blocks used)."""
    t0 = time.perf_counter()
    m = Manifest.open(mpath, create=False, readonly=True)
    try:
        rows = m.conn.execute("SELECT local_path, size FROM pull_items").fetchall()
    finally:
        m.close()
    made: set[str] = set()
    for rel, size in rows:
        path = dest / rel
        parent = str(path.parent)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, size)
        os.close(fd)
    return time.perf_counter() - t0


class StubClient:
    """Answers list_files from memory; anything else is a bug in this benchmark (nothing to fetch)."""

    listings: dict[Target, list[RemoteFile]] = {}

    def __init__(self, session, **kw) -> None:
        self.retry = kw.get("retry")

    async def list_files(self, target: Target, *, category=None, include_shared=False, token=None) -> Listing:
        return Listing(files=list(self.listings[target]))


def rerun(cfg_path: Path, listings: dict[Target, list[RemoteFile]]) -> dict:
    cfg = config_mod.load(str(cfg_path))
    StubClient.listings = listings
    opts = PullOptions(targets=tuple(listings), dest=Path(cfg.pull.dest), concurrency=cfg.pull.concurrency)

    t0 = time.perf_counter()
    stats, code = asyncio.run(execute(PullJob, cfg, opts, token="bench-token", concurrency=cfg.pull.concurrency,
                                      client_factory=StubClient))
    wall = time.perf_counter() - t0
    assert code == 0 and stats.files_total == 0, (code, stats.files_total)
    return {"wall_s": wall, "skipped": stats.skipped, "files_total": stats.files_total}


def timed_cmd(cmd: list[str], repeat: int = 3) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--targets", type=int, default=2000)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    dest = work / "backup"
    mpath = work / "manifest.sqlite"
    cfg = work / "syncer.toml"
    cfg.write_text('[api]\nbase_url = "http://127.0.0.1:9/clinic/api_v3"\naccount_code = "democlinic"\n'
                   '[manifest]\npath = "manifest.sqlite"\n[pull]\ndest = "backup"\n[log]\nlevel = "warning"\n',
                   encoding="utf-8")
    listings = make_listings(a.rows, a.targets)
    res: dict = {"rows": a.rows, "targets": a.targets}
    res.update(record(mpath, dest, listings))
    res["manifest_mib"] = mpath.stat().st_size / 2**20
    res["make_local_files_s"] = make_local_files(mpath, dest)
    exe = [sys.executable, "-m", "syncer"]
    res["status_runs_s"] = timed_cmd([*exe, "status", "-c", str(cfg)], a.repeat)
    res["status_json_runs_s"] = timed_cmd([*exe, "status", "-c", str(cfg), "--json"], a.repeat)
    res["python_startup_runs_s"] = timed_cmd([sys.executable, "-c", "import syncer.cli"], a.repeat)
    runs = [rerun(cfg, listings) for _ in range(a.repeat)]
    res["rerun_runs"] = runs
    res["rerun_plan_runs_s"] = [r["wall_s"] for r in runs]
    for key in ("status_runs_s", "status_json_runs_s", "python_startup_runs_s", "rerun_plan_runs_s"):
        res[key.replace("_runs_s", "_s")] = statistics.median(res[key])
    print(json.dumps(res))


if __name__ == "__main__":
    main()
