"""syncer's fixed cost per invocation: from exec to the first request, and from the end of the work to exit.

    /work/main/.venv/bin/python tests/perf/bench_startup.py                      # this checkout, 9 runs each
    ... --syncer-path /tmp/before --patched .      # A/B: two copies of the package, runs interleaved

Not collected by pytest (no ``test_`` prefix).  Starts tests/perf/perf_server.py (20 users x 5 files of
~40 KB, no added latency) and times, per copy of the package, as separate processes:

- ``syncer --help`` and ``syncer status`` (on the manifest of a finished pull): wall time;
- ``syncer pull -q`` into a new folder with a new manifest (a first run): wall time, client CPU, and
  from a small wrapper around ``python -m syncer`` (an audit hook): ms from exec to the first
  ``socket.connect`` (the first listing), and ms from the last ``atexit`` callback to the process's end
  (the interpreter's teardown);
- ``syncer pull -q`` again on that manifest (a do-nothing rerun: 20 listings, nothing to fetch).

Medians of ``--repeat`` runs.  Each copy's ``syncer/`` is byte-compiled first: with
PYTHONDONTWRITEBYTECODE=1 (set in this project's shells) a checkout without ``__pycache__`` compiles
every module on every run (~50 ms), which an installed package never does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from run_bench import REPO, Server

PY = sys.executable

# ``python -m syncer ARGS``, noting when the first connection opens and when the atexit callbacks end.
WRAPPER = textwrap.dedent("""
    import atexit, json, os, runpy, sys, time
    out = os.environ["STARTUP_MARKS"]
    marks = {}
    def hook(event, args):
        if event == "socket.connect" and "connect" not in marks:
            marks["connect"] = time.time()
    sys.addaudithook(hook)
    def last():  # registered first, so it runs last
        marks["atexit"] = time.time()
        with open(out, "w") as f:
            json.dump(marks, f)
    atexit.register(last)
    sys.argv = ["syncer", *sys.argv[1:]]
    runpy.run_module("syncer", run_name="__main__", alter_sys=True)
""")


def write_config(work: Path, info: dict) -> Path:
    cfg = work / "syncer.toml"
    lines = ["[api]", f'base_url = "{info["base_url"]}"', f'account_code = "{info["account_code"]}"',
             "[manifest]", f'path = "{work / "manifest.sqlite"}"', "[log]", 'level = "warning"',
             "[pull]", f'dest = "{work / "dest"}"', "targets = [" + ", ".join(f'"{t}"' for t in info["targets"]) + "]"]
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cfg


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """Wall seconds, client CPU seconds (wait4) and the end time of ``cmd``; it must exit 0."""
    t0 = time.time()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    end = time.time()
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    return end - t0, ru.ru_utime + ru.ru_stime, end


def one_round(tree: Path, info: dict, root: Path, n: int) -> dict[str, float]:
    work = root / f"{tree.name}-{n}"
    work.mkdir(parents=True)
    cfg = write_config(work, info)
    marks_file = work / "marks.json"
    env = dict(os.environ, PYTHONPATH=str(tree), VSEE_API_TOKEN=info["api_key"], STARTUP_MARKS=str(marks_file))
    env.pop("SYNCER_CONFIG", None)
    row: dict[str, float] = {}
    row["help_ms"] = run([PY, "-m", "syncer", "--help"], env, work)[0] * 1000
    start = time.time()
    wall, cpu, end = run([PY, "-c", WRAPPER, "pull", "-q", "-c", str(cfg)], env, work)
    marks = json.loads(marks_file.read_text())
    row |= {"pull_ms": wall * 1000, "pull_cpu_ms": cpu * 1000, "to_first_request_ms": (marks["connect"] - start) * 1000,
            "teardown_ms": (end - marks["atexit"]) * 1000}
    row["rerun_ms"] = run([PY, "-m", "syncer", "pull", "-q", "-c", str(cfg)], env, work)[0] * 1000
    row["status_ms"] = run([PY, "-m", "syncer", "status", "-c", str(cfg)], env, work)[0] * 1000
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--syncer-path", type=Path, default=REPO, help="a folder holding syncer/ (default: this checkout)")
    p.add_argument("--patched", type=Path, help="a second such folder, run interleaved with the first")
    p.add_argument("--repeat", type=int, default=9)
    a = p.parse_args()
    trees = [a.syncer_path.resolve()] + ([a.patched.resolve()] if a.patched else [])
    for tree in trees:
        subprocess.run([PY, "-m", "compileall", "-q", str(tree / "syncer")], check=True)
    root = Path(tempfile.mkdtemp(prefix="syncer-startup-"))
    rows: dict[Path, list[dict[str, float]]] = {t: [] for t in trees}
    try:
        with Server(users=20, files_per_user=5) as srv:
            for n in range(a.repeat):
                for tree in trees:
                    rows[tree].append(one_round(tree, srv.info, root, n))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    keys = list(rows[trees[0]][0])
    print(f"{'median of ' + str(a.repeat):24s}" + "".join(f"{k:>20s}" for k in keys))
    for tree in trees:
        print(f"{str(tree)[-24:]:24s}" + "".join(f"{statistics.median(r[k] for r in rows[tree]):20.1f}"
                                                 for k in keys))


if __name__ == "__main__":
    main()
