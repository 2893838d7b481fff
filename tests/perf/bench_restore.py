"""Benchmark: ``syncer restore`` against ``syncer push`` of the same files, in the same run.

    PYTHONPATH=. python tests/perf/bench_restore.py                  # 1,000 x ~40 KB at 50 ms, 3 repeats
    PYTHONPATH=. python tests/perf/bench_restore.py --files-per-user 10 --repeat 1   # a smoke run

Not collected by pytest (no ``test_`` prefix).  Account A (the built-in server, in this process, with
the added latency) is backed up once with ``syncer pull``.  Then, interleaved ``--repeat`` times, each
into a fresh destination server with the same latency and the same users:

- ``syncer push`` with ``push.source`` = the backup's ``user/`` folder (``<uid>/<category>/<name>``):
  the very bytes the restore sends, as push would send them;
- ``syncer restore --backup A --user-map`` (each user to itself in the other account).

Each is a real ``python -m syncer`` process timed end to end (start-up, listing, hashing, manifest and
all); files/s = files / wall seconds, median of the repeats.  The target (issue 14): restore at least
0.9x push.  Both use ``push.concurrency`` (default 16).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from syncer.fakeserver import FakeServer, Faults


def toml(folder: Path, srv: FakeServer, *, dest: Path | None = None, source: Path | None = None,
         tokens: Path | None = None, targets: list[str] | None = None) -> Path:
    text = (f'[api]\nbase_url = "{srv.base_url}"\naccount_code = "{srv.account_code}"\n'
            f'[manifest]\npath = "{folder / "manifest.sqlite"}"\n'
            f'[pull]\ndest = "{dest or folder / "backup"}"\ntargets = {json.dumps(targets or [])}\n')
    if source or tokens:
        text += f'[push]\nsource = "{source or folder / "upload"}"\ntokens_file = "{tokens}"\n'
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "syncer.toml"
    path.write_text(text, encoding="utf-8")
    return path


def run(args: list[str], token: str, cwd: Path) -> float:
    env = dict(os.environ, VSEE_API_TOKEN=token)
    env.pop("SYNCER_CONFIG", None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "syncer", *args, "-q"], env=env, cwd=cwd, capture_output=True,
                          text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:1])} failed ({proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-2000:]}")
    return wall


def destination(users: list[str], latency: float, work: Path, name: str) -> tuple[FakeServer, Path]:
    srv = FakeServer(seed=zlib.crc32(name.encode()), faults=Faults(latency_ms=latency))
    for u in users:
        srv.add_user(u)
    tokens = work / f"{name}-tokens.csv"
    tokens.write_text("user_id,token\n" + "".join(f"{u},{srv.token_for(u)}\n" for u in users))
    os.chmod(tokens, 0o600)
    return srv, tokens


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--files-per-user", type=int, default=50)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-restore-"))
    src = FakeServer(seed=5, users=a.users, files_per_user=a.files_per_user, sizes=(32_000, 40_000, 48_000),
                     faults=Faults(latency_ms=a.latency_ms))
    users = list(src.users)
    files = a.users * a.files_per_user
    fps: dict[str, list[float]] = {"push": [], "restore": []}
    with src.run_in_thread():
        cfg_a = toml(work / "a", src, targets=[f"user:{u}" for u in users])
        run(["pull", "-c", str(cfg_a)], src.api_key, work)
        user_map = work / "users.csv"
        user_map.write_text("source_user_id,dest_user_id\n" + "".join(f"{u},{u}\n" for u in users))
        for rep in range(a.repeat):
            for kind in ("push", "restore") if rep % 2 == 0 else ("restore", "push"):
                dst, tokens = destination(users, a.latency_ms, work, f"{kind}{rep}")
                with dst.run_in_thread():
                    folder = work / f"{kind}{rep}"
                    if kind == "push":
                        cfg = toml(folder, dst, source=work / "a" / "backup" / "user", tokens=tokens)
                        wall = run(["push", "-c", str(cfg)], dst.api_key, work)
                    else:
                        cfg = toml(folder, dst, tokens=tokens)
                        wall = run(["restore", "-c", str(cfg), "--backup", str(cfg_a), "--user-map", str(user_map)],
                                   dst.api_key, work)
                    stored = len(dst.files())
                if stored != files:
                    raise SystemExit(f"{kind}: {stored} documents stored, {files} expected")
                fps[kind].append(files / wall)
                print(f"rep {rep + 1} {kind:<8} {wall:6.2f} s  {files / wall:7.1f} files/s", flush=True)
    push, restore = statistics.median(fps["push"]), statistics.median(fps["restore"])
    print(f"{files} files of ~40 KB over {a.users} users at {a.latency_ms:g} ms, median of {a.repeat}:"
          f" push {push:.1f} files/s, restore {restore:.1f} files/s, restore/push {restore / push:.2f}x"
          f" (target >= 0.9x: {'met' if restore / push >= 0.9 else 'NOT met'})")


if __name__ == "__main__":
    main()
