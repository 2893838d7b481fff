"""Benchmark: ``syncer status`` (and the manifest reads behind ``verify``) on a large manifest.

Not collected by pytest (the file name does not start with ``test_``).  Run it by hand:

    /work/.venv/bin/python tests/perf/bench_manifest.py [--rows 200000] [--push-rows 20000] [--keep DIR]

It builds a manifest through the Manifest API only (the way pull and push write it: listing
inserts, then batched outcome updates with their events), about 1 % of the items failed or
permanent, then times ``status.collect`` in-process, ``syncer status`` and ``syncer status --json``
as subprocesses (what an operator waits for), and ``pull_done_rows`` (what verify loads).
The target is under 1 s for ``syncer status`` on 200,000 rows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from syncer.manifest import Manifest, Update
from syncer.report import status as status


def build(path: Path, rows: int, push_rows: int, targets: int = 2000) -> None:
    m = Manifest.open(path)
    try:
        for r in range(20):  # some history
            rid = m.start_run("pull", {"targets": targets})
            m.finish_run(rid, "ok" if r % 4 else "failed", {"files_done": 10, "bytes_done": 1000, "failed": r % 4})
        run_id = m.start_run("pull", {"targets": targets})
        per_target = rows // targets
        for t in range(targets):
            tid = f"{2317820000 + t}"
            inserts = [{
                "target_type": "user", "target_id": tid, "file_id": f"{t:05d}-{i:06d}-aaaa-bbbb-cccc",
                "category": "user_document", "remote_name": f"document {i}.pdf", "size": 100_000 + i,
                "created": 1_700_000_000 + i, "modified": None, "ext": "pdf", "owner_id": tid,
                "local_path": f"user/{tid}/user_document/document {i}.pdf",
                "path_key": f"user/{tid}/user_document/document {i}.pdf", "state": "pending",
            } for i in range(per_target)]
            m.apply_pull_listing(run_id, inserts, [], [])
            updates = []
            for i in range(per_target):
                key = ("user", tid, f"{t:05d}-{i:06d}-aaaa-bbbb-cccc")
                n = t * per_target + i
                if n % 100 == 7:
                    updates.append(Update("pull_items", key, {"state": "failed", "last_error": "server error 500",
                                                              "error_class": "ServerError"},
                                          event="failed", bump_attempts=True, error_class="ServerError"))
                elif n % 1000 == 8:
                    updates.append(Update("pull_items", key, {"state": "permanent", "last_error": "404 not found",
                                                              "error_class": "NotFoundError"},
                                          event="failed", bump_attempts=True, error_class="NotFoundError"))
                elif n % 97 != 0:  # the rest stays pending
                    updates.append(Update("pull_items", key, {"state": "done", "sha256": "ab" * 32,
                                                              "bytes": 100_000 + i, "done_at": "x"},
                                          event="done", bump_attempts=True))
            m.apply(updates, run_id)
        m.finish_run(run_id, "failed", {"files_done": rows, "failed": rows // 100})
        if push_rows:
            prun = m.start_run("push", {})
            batch = [{"user_id": f"{2317820000 + n % targets}", "rel_path": f"scans/{n}.pdf", "size": 5000,
                      "mtime_ns": 0, "sha256": "cd" * 32, "state": "done" if n % 50 else "failed",
                      "last_error": None if n % 50 else "server error 503", "error_class": None if n % 50
                      else "ServerError"} for n in range(push_rows)]
            m.upsert_push_items(prun, batch)
            m.finish_run(prun, "failed", {"files_done": push_rows})
    finally:
        m.close()


def timed(label: str, fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    print(f"{label:<44} best of {repeat}: {best * 1000:8.1f} ms")
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--push-rows", type=int, default=20_000)
    ap.add_argument("--keep", help="Build (or reuse) the manifest in this folder instead of a temp one.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="syncer-bench-") as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "manifest.sqlite"
        if not path.exists():
            t = time.perf_counter()
            build(path, args.rows, args.push_rows)
            print(f"built {args.rows} pull + {args.push_rows} push rows in {time.perf_counter() - t:.1f}s "
                  f"({path.stat().st_size / 2**20:.0f} MiB)")
        st = status.collect(path)
        print(f"pull total {st['pull']['total']['count']}, failed {st['pull']['failed_total']}; "
              f"push total {st['push']['total']['count']}, failed {st['push']['failed_total']}")
        timed("status.collect (in-process)", lambda: status.collect(path))
        timed("status.collect + render_text", lambda: status.render_text(status.collect(path)))
        cfg = folder / "bench.toml"
        cfg.write_text(f'[manifest]\npath = "{path}"\n', encoding="utf-8")
        exe = [sys.executable, "-m", "syncer"]
        env = dict(os.environ)
        timed("`syncer status` (subprocess, text)", lambda: subprocess.run(
            [*exe, "status", "-c", str(cfg)], check=True, capture_output=True, env=env), repeat=3)
        timed("`syncer status --json` (subprocess)", lambda: subprocess.run(
            [*exe, "status", "-c", str(cfg), "--json"], check=True, capture_output=True, env=env), repeat=3)
        timed("`python -c pass` (interpreter start-up)", lambda: subprocess.run(
            [sys.executable, "-c", "pass"], check=True), repeat=3)

        def done_rows() -> None:
            m = Manifest.open(path, create=False, readonly=True)
            try:
                m.pull_done_rows()
            finally:
                m.close()

        timed("pull_done_rows (what verify loads)", done_rows, repeat=3)
        tracemalloc.start()
        done_rows()
        print(f"pull_done_rows peak memory: {tracemalloc.get_traced_memory()[1] / 2**20:.0f} MiB")
        tracemalloc.stop()


if __name__ == "__main__":
    main()
