"""syncer's benchmark: one command, every peer measured in the same run against the same server.

    /work/.venv/bin/python tests/perf/run_bench.py            # the full run (about 10 minutes)
    /work/.venv/bin/python tests/perf/run_bench.py --quick    # a smoke run with small counts
    ... --only a,b --repeat 5 --workdir /tmp/bench --keep

Not collected by pytest (no ``test_`` prefix).  See tests/perf/README.md for what each figure means.

(a) many small files (2,000 files of about 40 KB over 20 users) at 0 ms and 50 ms of added latency:
    syncer pull end to end (a subprocess: start-up, listing, manifest, fsyncs and all) against a naive
    sequential urllib script, aria2c -j C and curl --parallel fed the fullpaths listed beforehand
    (download only), the floor of syncer's own stack (tests/perf/aiohttp_floor.py: aiohttp on uvloop, GET +
    sha256, and + write), and the server's ceiling (wrk, keep-alive, cycling over the same view links).
    Client CPU per file for each; for syncer also net of a do-nothing rerun (start-up, listing, planning).
(b) one 1 GiB file: syncer pull against curl -o (and aria2c) on the same link; MB/s and peak RSS.
(c) the manifest at 200,000 files: tests/perf/bench_scale.py.
(d) push of 1,000 files of about 40 KB at 50 ms against a sequential curl -F loop (skipped, saying
    so, while ``syncer push`` does not exist).
(e) one 1 GiB file in parallel Range segments: at 20 ms and 40 MB/s a connection against curl -o and
    aria2c -x8 -s8; uncapped into tmpfs against curl -s | tee FILE | sha256sum (syncer hashes every byte).
    Not in the default --only (run it with --only e).

The server is tests/perf/perf_server.py in its own process: the client's CPU time comes from wait4()
on the measured process (its reaped children included), the server's from /proc/<pid>/stat.  Each
configuration is run --repeat times, interleaved with the others, and the median is quoted.  Raw runs
go to tests/perf/results/<date>-<host>.json and the printed table to the .txt beside it.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
INSTALL_HINT = "apt-get update && apt-get install -y aria2 curl wrk"


# ------------------------------------------------------------------------------------------ plumbing

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK


class Server:
    """perf_server.py in its own process; ``info`` is its JSON line."""

    def __init__(self, *, users: int, files_per_user: int, sizes: str = "32000,40000,48000",
                 latency_ms: float = 0.0, big_bytes: int = 0, data_dir: Path | None = None,
                 conn_rate_mbps: float = 0.0) -> None:
        cmd = [PY, str(HERE / "perf_server.py"), "--users", str(users), "--files-per-user", str(files_per_user),
               "--sizes", sizes, "--latency-ms", str(latency_ms), "--big-bytes", str(big_bytes),
               "--conn-rate-mbps", str(conn_rate_mbps)]
        if data_dir is not None:
            cmd += ["--data-dir", str(data_dir)]
        self.latency_ms = latency_ms
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError("the benchmark server did not start")
        self.info = json.loads(line)
        self.pid = self.proc.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def measure(cmd: list[str], *, server: Server | None = None, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 900, before_exit=None) -> dict:
    """Run ``cmd``; wall time, its CPU (wait4: itself plus reaped children), peak RSS, the server's CPU."""
    os.sync()  # what an earlier run left dirty is not this run's to write back
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    s0 = server.cpu() if server else 0.0
    m0 = machine_busy()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        _, status, ru = os.wait4(p.pid, 0)
    finally:
        timer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    extra_wall = 0.0
    if before_exit is not None:  # e.g. aria2c's syncfs: part of its wall time, done by another process
        t1 = time.perf_counter()
        before_exit()
        extra_wall = time.perf_counter() - t1
    wall = time.perf_counter() - t0
    s1 = server.cpu() if server else 0.0
    m1 = machine_busy()
    out.seek(0)
    err.seek(0)
    res = {"cmd": " ".join(cmd[:3]) + (" ..." if len(cmd) > 3 else ""), "rc": p.returncode, "wall_s": wall,
           "client_user_s": ru.ru_utime, "client_sys_s": ru.ru_stime, "client_cpu_s": ru.ru_utime + ru.ru_stime,
           "client_maxrss_mib": ru.ru_maxrss / 1024, "server_cpu_s": s1 - s0, "extra_wall_s": extra_wall,
           # what else ran meanwhile (other processes on this machine): a noisy neighbour shows here
           "other_cpu_s": max(0.0, (m1 - m0) - (ru.ru_utime + ru.ru_stime) - (s1 - s0)),
           "stdout_tail": out.read()[-2000:].decode("utf-8", "replace"),
           "stderr_tail": err.read()[-2000:].decode("utf-8", "replace")}
    out.close()
    err.close()
    return res


def count_files(root: Path) -> tuple[int, int]:
    n = b = 0
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.startswith(".") or f.endswith(".sqlite") or f.endswith(".aria2"):
                continue
            n += 1
            b += os.path.getsize(os.path.join(d, f))
    return n, b


def list_links(info: dict, targets: list[str] | None = None) -> list[dict]:
    """Every file of the targets with its fullpath, listed the way the API offers (one GET per target)."""
    headers = {"X-ApiToken": info["api_key"], "X-AccountCode": info["account_code"]}
    out = []
    for target in targets or info["targets"]:
        ttype, tid = target.split(":", 1)
        q = urllib.parse.urlencode({"target_type": ttype, "target_id": tid})
        req = urllib.request.Request(f"{info['base_url']}/files?{q}", headers=headers)
        with urllib.request.urlopen(req, timeout=60) as r:
            for item in json.loads(r.read())["data"]:
                out.append({"target": target, "id": item["id"], "size": item["size"], "url": item["fullpath"]})
    return out


def write_syncer_config(work: Path, info: dict, targets: list[str], dest: Path, concurrency: int | None,
                        push: dict | None = None, pull_extra: str = "") -> Path:
    cfg = work / "syncer.toml"
    lines = ["[api]", f'base_url = "{info["base_url"]}"', f'account_code = "{info["account_code"]}"',
             "[manifest]", f'path = "{work / "manifest.sqlite"}"', "[log]", 'level = "warning"',
             "[pull]", f'dest = "{dest}"', "targets = [" + ", ".join(f'"{t}"' for t in targets) + "]"]
    if concurrency is not None:
        lines.append(f"concurrency = {concurrency}")
    if pull_extra:
        lines.append(pull_extra)
    if push is not None:
        lines += ["[push]", f'source = "{push["source"]}"', f'tokens_file = "{push["tokens_file"]}"']
        if push.get("concurrency"):
            lines.append(f"concurrency = {push['concurrency']}")
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cfg


_run_numbers = itertools.count(1)


def new_dest(root: Path) -> Path:
    """A new, empty folder below ``root`` for one run.  Earlier runs' files stay until the section
    ends: deleting the last run's 2,000 files just before the next run made ext4 search past every
    recently deleted inode on each create (perf: 15-18 % of all CPU in ext4_create -> recently_deleted,
    plus spinning on the folder's lock in a tool that creates files from several threads), a cost
    of the benchmark's clean-up, not of the tool measured."""
    return fresh(root / f"run-{next(_run_numbers)}")


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def med(runs: list[dict], key: str) -> float:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


# ---------------------------------------------------------------------------------------- (a) peers

def syncer_env(info: dict, src: str | None) -> dict:
    env = dict(os.environ, VSEE_API_TOKEN=info["api_key"])
    if src:  # another copy of the package (e.g. a patched one): it goes first on the path
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_syncer_pull(srv: Server, work: Path, dest: Path, concurrency: int | None, targets: list[str] | None = None,
                    expect: int | None = None, src: str | None = None, pull_extra: str = "",
                    env_extra: dict | None = None, rerun: bool = False) -> dict:
    """One syncer pull into a new folder.  ``rerun``: then the same pull again over the same config, folder
    and manifest, a do-nothing rerun (start-up, listing, planning; nothing to fetch) measured apart as
    ``r["rerun"]``, so that the pull's CPU per file can be quoted net of its fixed costs."""
    fresh(work)
    dest = new_dest(dest)
    cfg = write_syncer_config(work, srv.info, targets or srv.info["targets"], dest, concurrency,
                              pull_extra=pull_extra)
    env = dict(syncer_env(srv.info, src), **(env_extra or {}))
    cmd = [PY, "-m", "syncer", "pull", "-c", str(cfg), "-q"]
    r = measure(cmd, server=srv, cwd=work, env=env)
    r["files"], r["bytes"] = count_files(dest)
    r["ok"] = r["rc"] == 0 and (expect is None or r["files"] == expect)
    if rerun and r["ok"]:
        before = file_identities(dest)
        rr = measure(cmd, server=srv, cwd=work, env=env)
        # a rerun that fetched anything (a new inode or mtime: a file renamed into place again) is not one
        rr["ok"] = rr["rc"] == 0 and file_identities(dest) == before
        r["rerun"] = {k: rr[k] for k in ("rc", "ok", "wall_s", "client_cpu_s", "server_cpu_s", "other_cpu_s",
                                         "stderr_tail")}
    return r


def file_identities(root: Path) -> dict[str, tuple[int, int, int]]:
    """The files ``count_files`` counts below ``root``, by inode, size and mtime."""
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.startswith(".") or f.endswith(".sqlite") or f.endswith(".aria2"):
                continue
            st = os.stat(os.path.join(d, f))
            out[os.path.join(d, f)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def run_aria2c(srv: Server, work: Path, dest: Path, links: list[dict], j: int, durable: bool) -> dict:
    fresh(work)
    dest = new_dest(dest)
    lst = work / "urls.txt"
    with open(lst, "w") as f:
        for ln in links:
            ttype, tid = ln["target"].split(":", 1)
            f.write(f"{ln['url']}\n  dir={dest}/{ttype}/{tid}\n  out={ln['id']}\n")
    # -j C downloads at once, one connection each (-x1 -s1; -x is per download and aria2c refuses more
    # than 16); retries as syncer's: a few tries, no fixed wait (no faults are injected here anyway).
    cmd = ["aria2c", "-i", str(lst), "-j", str(j), "-x1", "-s1", "--max-tries=5", "--retry-wait=0",
           "--allow-overwrite=true", "--auto-file-renaming=false", "--quiet=true", "--summary-interval=0",
           "--console-log-level=error", "--download-result=hide", "--enable-http-keep-alive=true"]
    sync = (lambda: subprocess.run(["sync", "-f", str(dest)], check=True)) if durable else None
    r = measure(cmd, server=srv, cwd=work, before_exit=sync)
    r["files"], r["bytes"] = count_files(dest)
    r["ok"] = r["rc"] == 0 and r["files"] == len(links)
    return r


def run_curl_parallel(srv: Server, work: Path, dest: Path, links: list[dict], j: int) -> dict:
    fresh(work)
    dest = new_dest(dest)
    kfile = work / "curl.cfg"
    with open(kfile, "w") as f:
        for ln in links:
            ttype, tid = ln["target"].split(":", 1)
            f.write(f'url = "{ln["url"]}"\noutput = "{dest}/{ttype}/{tid}/{ln["id"]}"\n')
    cmd = ["curl", "-sS", "--fail", "--parallel", "--parallel-max", str(j), "--create-dirs", "-K", str(kfile)]
    r = measure(cmd, server=srv, cwd=work)
    r["files"], r["bytes"] = count_files(dest)
    r["ok"] = r["rc"] == 0 and r["files"] == len(links)
    return r


def run_naive(srv: Server, work: Path, dest: Path, max_files: int) -> dict:
    fresh(work)
    dest = new_dest(dest)
    cmd = [PY, str(HERE / "naive_pull.py"), srv.info["base_url"], str(dest), *srv.info["targets"],
           "--token", srv.info["api_key"], "--account", srv.info["account_code"], "--max-files", str(max_files)]
    r = measure(cmd, server=srv, cwd=work)
    r["files"], r["bytes"] = count_files(dest)
    r["ok"] = r["rc"] == 0 and r["files"] == max_files
    return r


def run_aiohttp_floor(srv: Server, work: Path, dest: Path, links: list[dict], concurrency: int, write: bool) -> dict:
    """aiohttp_floor.py: GET + sha256 of every link, C at a time (and with ``write``: create, write, rename)."""
    fresh(work)
    lst = work / "links.json"
    lst.write_text(json.dumps([{k: ln[k] for k in ("target", "id", "url")} for ln in links]), encoding="utf-8")
    cmd = [PY, str(HERE / "aiohttp_floor.py"), str(lst), "--concurrency", str(concurrency)]
    if write:
        dest = new_dest(dest)
        cmd += ["--dest", str(dest)]
    r = measure(cmd, server=srv, cwd=work)
    done = json.loads(r["stdout_tail"].strip().splitlines()[-1]) if r["rc"] == 0 else {"files": 0, "bytes": 0}
    r["files"], r["bytes"] = count_files(dest) if write else (done["files"], done["bytes"])
    r["ok"] = r["rc"] == 0 and done["files"] == len(links) and r["files"] == len(links)
    r["startup_cpu_s"] = done.get("startup_cpu_s")  # its CPU before the first request, by getrusage
    return r


def run_wrk(srv: Server, work: Path, links: list[dict], conns: int, seconds: int) -> dict:
    """The server's view ceiling: wrk (C, epoll, keep-alive) cycling over the view links."""
    work.mkdir(parents=True, exist_ok=True)
    paths = work / "wrk-paths.txt"
    with open(paths, "w") as f:
        for ln in links:
            u = urllib.parse.urlsplit(ln["url"])
            f.write(f"{u.path}?{u.query}\n")
    lua = work / "wrk.lua"
    lua.write_text(
        'local paths = {}\nlocal i = 0\n'
        f'for line in io.lines("{paths}") do paths[#paths + 1] = line end\n'
        'request = function()\n  i = i % #paths + 1\n  return wrk.format("GET", paths[i])\nend\n')
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(lua), srv.info["origin"]]
    r = measure(cmd, server=srv, cwd=work, timeout=seconds + 60)
    out = r["stdout_tail"]
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:(.*)", out)
    r["req_per_s"] = float(m.group(1)) if m else None
    r["non_2xx"] = int(bad.group(1)) if bad else 0
    r["socket_errors"] = errs.group(1).strip() if errs else ""
    r["ok"] = r["rc"] == 0 and r["req_per_s"] is not None and r["non_2xx"] == 0
    return r


# ------------------------------------------------------------------------------------------ sections

def section_a(args, work: Path, results: dict) -> None:
    users, per_user = (4, 25) if args.quick else (20, 100)
    nfiles = users * per_user
    C = args.concurrency
    out: dict = {"users": users, "files": nfiles, "sizes": "32000,40000,48000 (cycled; mean 40,000 B)",
                 "concurrency": C, "latencies": {}}
    results["a"] = out
    dest_root = Path(args.disk_dir) / "bench-a"
    for lat in args.latencies:
        log(f"(a) starting the server: {nfiles} files, latency {lat} ms")
        with Server(users=users, files_per_user=per_user, latency_ms=lat) as srv:
            links = list_links(srv.info)
            assert len(links) == nfiles, (len(links), nfiles)
            naive_n = nfiles if lat == 0 else min(nfiles, 40 if args.quick else 200)
            # every syncer run is followed by a do-nothing rerun (measured apart): its CPU per file net of start-up
            peers: dict[str, callable] = {
                f"syncer C={C}": lambda: run_syncer_pull(srv, work / "s", dest_root, C, expect=nfiles,
                                                         src=args.syncer_path, rerun=True),
                "syncer default C": lambda: run_syncer_pull(srv, work / "s", dest_root, None, expect=nfiles,
                                                            src=args.syncer_path, rerun=True),
            }
            if args.patched:
                peers[f"syncer PATCHED C={C}"] = lambda: run_syncer_pull(srv, work / "s", dest_root, C, expect=nfiles,
                                                                         src=args.patched, rerun=True)
                peers["syncer PATCHED default C"] = lambda: run_syncer_pull(srv, work / "s", dest_root, None,
                                                                            expect=nfiles, src=args.patched,
                                                                            rerun=True)
            peers[f"aiohttp floor C={C}"] = (
                lambda links=links: run_aiohttp_floor(srv, work / "f", dest_root, links, C, write=False))
            peers[f"aiohttp floor C={C} + write"] = (
                lambda links=links: run_aiohttp_floor(srv, work / "f", dest_root, links, C, write=True))
            if have("aria2c"):
                def aria(j: int, durable: bool, links: list[dict] = links) -> Callable[[], dict]:
                    return lambda: run_aria2c(srv, work / "a", dest_root, links, j, durable)
                peers[f"aria2c -j{C}"] = aria(C, False)
                peers[f"aria2c -j{C} + syncfs"] = aria(C, True)
                peers["aria2c -j64"] = aria(64, False)
            if have("curl"):
                peers[f"curl --parallel-max {C}"] = (
                    lambda links=links: run_curl_parallel(srv, work / "c", dest_root, links, C))
            peers[f"naive urllib ({naive_n} files)"] = lambda n=naive_n: run_naive(srv, work / "n", dest_root, n)
            runs: dict[str, list[dict]] = {k: [] for k in peers}
            for rep in range(args.repeat):
                for name, fn in peers.items():
                    r = fn()
                    n = naive_n if name.startswith("naive") else nfiles
                    r["files_per_s"] = n / r["wall_s"] if r["ok"] else None
                    r["cpu_ms_per_file"] = r["client_cpu_s"] / n * 1000 if r["ok"] else None
                    rerun = r.get("rerun")
                    if rerun:  # syncer: net of its do-nothing rerun (start-up, listing, planning)
                        r["net_cpu_ms_per_file"] = ((r["client_cpu_s"] - rerun["client_cpu_s"]) / n * 1000
                                                    if r["ok"] and rerun["ok"] else None)
                    elif r.get("startup_cpu_s") is not None:  # the aiohttp floor: net of its start-up
                        r["net_cpu_ms_per_file"] = ((r["client_cpu_s"] - r["startup_cpu_s"]) / n * 1000
                                                    if r["ok"] else None)
                    runs[name].append(r)
                    log(f"(a) {lat} ms rep {rep + 1} {name}: {r['wall_s']:.2f}s "
                        f"{r['files_per_s'] or 0:.0f} files/s ok={r['ok']} cpu {r['client_cpu_s']:.2f}/"
                        f"{r['server_cpu_s']:.2f}"
                        + (f" rerun cpu {rerun['client_cpu_s']:.2f} ok={rerun['ok']}" if rerun else "")
                        + (f" rerun rc={rerun['rc']} {rerun['stderr_tail'][-300:]}"
                           if rerun and not rerun["ok"] else "")
                        + ("" if r["ok"] else f" rc={r['rc']} {r['stderr_tail'][-300:]}"))
            ceil: dict[str, dict] = {}
            if have("wrk"):
                for conns in ([C, 64] if lat == 0 else [C, 64, 256]):
                    rr = [run_wrk(srv, work / "w", links, conns, 3 if args.quick else 5)
                          for _ in range(1 if args.quick else 2)]
                    ceil[f"wrk -c{conns}"] = {"runs": rr, "req_per_s": max(r["req_per_s"] or 0 for r in rr),
                                              "client_cpu_s": med(rr, "client_cpu_s"),
                                              "server_cpu_s": med(rr, "server_cpu_s"), "wall_s": med(rr, "wall_s")}
                    log(f"(a) {lat} ms wrk -c{conns}: {ceil[f'wrk -c{conns}']['req_per_s']:.0f} views/s")
            out["latencies"][str(lat)] = {"naive_files": naive_n, "runs": runs, "ceiling": ceil,
                                          "missing": [t for t in ("aria2c", "curl", "wrk") if not have(t)]}
    shutil.rmtree(dest_root, ignore_errors=True)  # every run's files, at the end (see new_dest)


def section_b(args, work: Path, results: dict) -> None:
    size = 64 * 2**20 if args.quick else 2**30
    dest_root = Path(args.big_dir) / "syncer-bench-b"
    log(f"(b) starting the server with one {size >> 20} MiB file (the server keeps it in {work / 'srvdata'})")
    out: dict = {"bytes": size, "dest": str(dest_root.parent)}
    results["b"] = out
    with Server(users=0, files_per_user=0, big_bytes=size, data_dir=fresh(work / "srvdata")) as srv:
        target = f"user:{srv.info['big_user']}"
        link = list_links(srv.info, [target])[0]
        peers = {"syncer": lambda: run_syncer_pull(srv, work / "s", dest_root, None, [target], expect=1,
                                                   src=args.syncer_path)}
        if args.patched:
            peers["syncer PATCHED"] = lambda: run_syncer_pull(srv, work / "s", dest_root, None, [target], expect=1,
                                                              src=args.patched)
        if have("curl"):
            def curl() -> dict:
                fresh(dest_root)
                r = measure(["curl", "-sS", "--fail", "-o", str(dest_root / "scan.bin"), link["url"]], server=srv)
                r["files"], r["bytes"] = count_files(dest_root)
                r["ok"] = r["rc"] == 0 and r["bytes"] == size
                return r
            peers["curl -o"] = curl
        if have("aria2c"):
            peers["aria2c -x1"] = lambda: run_aria2c(srv, work / "a", dest_root, [link], 1, False)
        runs: dict[str, list[dict]] = {k: [] for k in peers}
        for rep in range(args.repeat):
            for name, fn in peers.items():
                r = fn()
                r["mb_per_s"] = size / r["wall_s"] / 1e6 if r["ok"] and r["bytes"] == size else None
                runs[name].append(r)
                log(f"(b) rep {rep + 1} {name}: {r['wall_s']:.2f}s {r['mb_per_s'] or 0:.0f} MB/s "
                    f"rss {r['client_maxrss_mib']:.0f} MiB ok={r['ok']}"
                    + ("" if r["ok"] else f" rc={r['rc']} {r['stderr_tail'][-300:]}"))
                shutil.rmtree(dest_root, ignore_errors=True)
        out["runs"] = runs
    shutil.rmtree(work / "srvdata", ignore_errors=True)


def section_e(args, work: Path, results: dict) -> None:
    """(e) one big file in parallel Range segments: capped per connection (20 ms, 40 MB/s a connection)
    against curl -o and aria2c -x8 -s8, and uncapped into tmpfs against curl | tee | sha256sum."""
    size = 256 * 2**20 if args.quick else 2**30
    dest_root = Path(args.big_dir) / "syncer-bench-e"
    out: dict = {"bytes": size, "dest": str(dest_root.parent), "capped": {}, "uncapped": {}}
    results["e"] = out
    srvdata = fresh(work / "srvdata-e")

    def whole(name: str, cmd: list[str], srv: Server, shell: bool = False) -> dict:
        fresh(dest_root)
        r = measure(["bash", "-o", "pipefail", "-c", " ".join(cmd)] if shell else cmd, server=srv)
        r["files"], r["bytes"] = count_files(dest_root)
        r["ok"] = r["rc"] == 0 and r["bytes"] == size
        return r

    def run_mode(mode: str, lat: int, rate: float) -> None:
        log(f"(e) {mode}: one {size >> 20} MiB file, latency {lat} ms, {rate or 'no'} MB/s cap a connection")
        with Server(users=0, files_per_user=0, big_bytes=size, data_dir=srvdata, latency_ms=lat,
                    conn_rate_mbps=rate) as srv:
            target = f"user:{srv.info['big_user']}"
            link = list_links(srv.info, [target])[0]
            url = link["url"]
            out_file = dest_root / "scan.bin"

            def syncer(segments: int, hash_mode: str = "inorder", src: str | None = args.syncer_path):
                return lambda: run_syncer_pull(srv, work / "s", dest_root, None, [target], expect=1, src=src,
                                               pull_extra=f"segments = {segments}",
                                               env_extra={"SYNCER_SEGMENT_HASH": hash_mode})
            peers: dict[str, Callable[[], dict]] = {
                "syncer segments=8": syncer(8), "syncer segments=4": syncer(4),
                "syncer segments=8, hash at end": syncer(8, "end"), "syncer segments=1 (one stream)": syncer(1)}
            if args.patched:
                peers["syncer PATCHED"] = syncer(8, src=args.patched)
            if have("curl"):
                if mode == "capped":
                    peers["curl -o"] = lambda: whole("curl", ["curl", "-sS", "--fail", "-o", str(out_file), url], srv)
                else:
                    peers["curl -s | tee | sha256sum"] = lambda: whole(
                        "tee", ["curl", "-sS", "--fail", f"'{url}'", "|", "tee", str(out_file), "|", "sha256sum",
                                ">/dev/null"], srv, shell=True)
                    peers["curl -o"] = lambda: whole("curl", ["curl", "-sS", "--fail", "-o", str(out_file), url], srv)
            if have("aria2c"):
                def aria() -> dict:
                    fresh(dest_root)
                    cmd = ["aria2c", "-x8", "-s8", "-k1M", "--max-tries=5", "--retry-wait=0", "--quiet=true",
                           "--allow-overwrite=true", "--auto-file-renaming=false", "--file-allocation=none",
                           "-d", str(dest_root), "-o", "scan.bin", url]
                    r = measure(cmd, server=srv)
                    r["files"], r["bytes"] = count_files(dest_root)
                    r["ok"] = r["rc"] == 0 and r["bytes"] == size
                    return r
                peers["aria2c -x8 -s8"] = aria
            runs: dict[str, list[dict]] = {k: [] for k in peers}
            for rep in range(args.repeat):
                for name, fn in peers.items():
                    if mode == "capped" and name.startswith("syncer segments=1") and rep > 0:
                        continue  # one stream at 40 MB/s: the same as curl -o, 27 s a run; once is enough
                    r = fn()
                    r["mb_per_s"] = size / r["wall_s"] / 1e6 if r["ok"] else None
                    runs[name].append(r)
                    log(f"(e) {mode} rep {rep + 1} {name}: {r['wall_s']:.2f}s {r['mb_per_s'] or 0:.0f} MB/s "
                        f"rss {r['client_maxrss_mib']:.0f} MiB cpu {r['client_cpu_s']:.2f} other "
                        f"{r['other_cpu_s']:.2f} ok={r['ok']}"
                        + ("" if r["ok"] else f" rc={r['rc']} {r['stderr_tail'][-300:]}"))
                    shutil.rmtree(dest_root, ignore_errors=True)
            out[mode] = {"latency_ms": lat, "conn_rate_mbps": rate, "runs": runs}
    for mode, lat, rate in (("capped", 20, 40.0), ("uncapped", 0, 0.0)):
        run_mode(mode, lat, rate)
    shutil.rmtree(srvdata, ignore_errors=True)


def section_c(args, work: Path, results: dict) -> None:
    rows, targets = (20_000, 200) if args.quick else (200_000, 2000)
    where = fresh(Path(args.disk_dir) / "bench-c")
    log(f"(c) manifest at scale: {rows} rows over {targets} targets in {where}")
    p = subprocess.run([PY, str(HERE / "bench_scale.py"), "--rows", str(rows), "--targets", str(targets),
                        "--workdir", str(where), "--repeat", str(args.repeat)],
                       capture_output=True, text=True, cwd=REPO, timeout=1800)
    if p.returncode != 0:
        results["c"] = {"error": p.stderr[-3000:]}
        log(f"(c) FAILED: {p.stderr[-1500:]}")
    else:
        results["c"] = json.loads(p.stdout.strip().splitlines()[-1])
        c = results["c"]
        log(f"(c) listing {c['record_listing_s']:.2f}s outcomes {c['record_outcomes_s']:.2f}s status "
            f"{c['status_s']:.2f}s rerun {c['rerun_plan_s']:.2f}s")
    shutil.rmtree(where, ignore_errors=True)


def push_available() -> tuple[bool, str]:
    p = subprocess.run([PY, "-m", "syncer", "push", "--help"], capture_output=True, text=True, cwd=REPO)
    if p.returncode != 0:
        return False, "`syncer push` does not exist yet (`python -m syncer push --help` failed)"
    return True, ""


def section_d(args, work: Path, results: dict) -> None:
    ok, why = push_available()
    users, nfiles = (4, 100) if args.quick else (20, 1000)
    out: dict = {"files": nfiles, "users": users, "latency_ms": 50}
    results["d"] = out
    if not ok:
        out["skipped"] = why
        log(f"(d) skipped: {why}")
        return
    src = fresh(work / "push-src")
    sizes = (32000, 40000, 48000)
    lat = 50.0
    loop_n = min(nfiles, 40 if args.quick else 200)

    def make_source(info: dict) -> tuple[Path, list[tuple[str, Path]]]:
        fresh(src)
        items = []
        uids = list(info["user_tokens"])
        for i in range(nfiles):
            uid = uids[i % len(uids)]
            d = src / uid
            d.mkdir(exist_ok=True)
            pth = d / f"scan-{i:05d}.pdf"
            pth.write_bytes(os.urandom(sizes[i % 3]))
            items.append((uid, pth))
        tok = work / "tokens.csv"
        tok.write_text("user_id,token\n" + "".join(f"{u},{t}\n" for u, t in info["user_tokens"].items()))
        os.chmod(tok, 0o600)
        return tok, items

    runs: dict[str, list[dict]] = {"syncer push": [], f"sequential curl -F loop ({loop_n} files)": []}
    for rep in range(args.repeat):
        with Server(users=users, files_per_user=0, latency_ms=lat) as srv:  # a fresh server: nothing uploaded yet
            tok, items = make_source(srv.info)
            w = fresh(work / "push")
            cfg = write_syncer_config(w, srv.info, srv.info["targets"], w / "backup", None,
                                      push={"source": src, "tokens_file": tok})
            env = syncer_env(srv.info, args.syncer_path)
            r = measure([PY, "-m", "syncer", "push", "-c", str(cfg), "-q"], server=srv, cwd=w, env=env)
            r["ok"] = r["rc"] == 0
            r["files_per_s"] = nfiles / r["wall_s"] if r["ok"] else None
            runs["syncer push"].append(r)
            log(f"(d) rep {rep + 1} syncer push: {r['wall_s']:.2f}s {r['files_per_s'] or 0:.0f} files/s ok={r['ok']}"
                + ("" if r["ok"] else f" {r['stderr_tail'][-300:]}"))
        with Server(users=users, files_per_user=0, latency_ms=lat) as srv:
            tok, items = make_source(srv.info)
            script = work / "curl-loop.sh"
            url = f"{srv.info['base_url']}/files"
            with open(script, "w") as f:
                f.write("set -e\n")
                for uid, pth in items[:loop_n]:
                    f.write(f"curl -sS --fail -o /dev/null -H 'X-ApiToken: {srv.info['user_tokens'][uid]}' "
                            f"-H 'X-AccountCode: {srv.info['account_code']}' -F meta.category=user_document "
                            f"-F 'file=@{pth}' '{url}'\n")
            r = measure(["bash", str(script)], server=srv, cwd=work)
            r["ok"] = r["rc"] == 0
            r["files_per_s"] = loop_n / r["wall_s"] if r["ok"] else None
            runs[f"sequential curl -F loop ({loop_n} files)"].append(r)
            log(f"(d) rep {rep + 1} curl loop: {r['wall_s']:.2f}s {r['files_per_s'] or 0:.1f} files/s ok={r['ok']}")
    out["runs"] = runs


# ----------------------------------------------------------------------------------------- reporting

def fmt(x: float | None, nd: int = 0) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:,.{nd}f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def ratio_target(what: str, x: float, ref: float | None, k: float) -> tuple[str, str, str]:
    """A "``x`` >= ``k`` times ``ref``" target row; n/a when the peer was not run (not installed)."""
    return (what, f"{fmt(x)} vs {fmt(ref)} = {fmt(x / ref if ref else None, 2)}x",
            verdict(x >= k * ref if ref else None))


def report(results: dict) -> str:
    L: list[str] = []
    env = results["env"]
    L.append(f"syncer benchmark  {env['date']}  host {env['host']}  {env['cpus']} CPUs  python {env['python']}"
             f"  repeat {env['repeat']} (median quoted){'  QUICK' if env['quick'] else ''}")
    L.append(f"tools: {', '.join(f'{k} {v}' for k, v in env['tools'].items())}")
    targets: list[tuple[str, str, str]] = []
    a = results.get("a")
    if a:
        C = a["concurrency"]
        L.append("")
        L.append(f"(a) {a['files']} files over {a['users']} users, sizes {a['sizes']}; concurrency C = {C}")
        for lat, d in a["latencies"].items():
            runs = d["runs"]
            fps = {k: med(v, "files_per_s") for k, v in runs.items()}
            ref = fps.get(f"aria2c -j{C}")
            L.append("")
            L.append(f"  latency {lat} ms (arithmetic limit at C={C}: "
                     f"{'-' if float(lat) == 0 else fmt(C / (float(lat) / 1000))} files/s)")
            L.append(f"  {'peer':<34}{'wall s':>8}{'files/s':>9}{'x aria2c':>9}{'client CPU s':>13}{'CPU ms/file':>12}"
                     f"{'server CPU s':>13}{'other CPU s':>12}{'client RSS MiB':>15}  ok")
            for name, rr in runs.items():
                f = fps[name]
                L.append(f"  {name:<34}{fmt(med(rr, 'wall_s'), 2):>8}{fmt(f):>9}"
                         f"{fmt(f / ref if ref and f == f else None, 2):>9}{fmt(med(rr, 'client_cpu_s'), 2):>13}"
                         f"{fmt(med(rr, 'cpu_ms_per_file'), 2):>12}"
                         f"{fmt(med(rr, 'server_cpu_s'), 2):>13}{fmt(med(rr, 'other_cpu_s'), 2):>12}"
                         f"{fmt(med(rr, 'client_maxrss_mib'), 0):>15}"
                         f"  {sum(r['ok'] for r in rr)}/{len(rr)}")
            for name, c in d["ceiling"].items():
                L.append(f"  {name + ' (server ceiling)':<34}{fmt(c['wall_s'], 2):>8}{fmt(c['req_per_s']):>9}"
                         f"{'':>9}{fmt(c['client_cpu_s'], 2):>13}{'':>12}{fmt(c['server_cpu_s'], 2):>13}")
            if d["missing"]:
                L.append(f"  skipped peers (not installed: {', '.join(d['missing'])}); install: {INSTALL_HINT}")
            ceiling = max([c["req_per_s"] for c in d["ceiling"].values()] + [v for v in fps.values() if v == v],
                          default=float("nan"))
            L.append(f"  server ceiling (most view requests/s any client got): {fmt(ceiling)}/s")
            # CPU per file net of fixed costs: each syncer run's CPU less its do-nothing rerun's (start-up, listing,
            # planning, no fetch); the floor's less its own CPU before its first request; medians of the runs' figures
            nets = {k: v for k, v in runs.items() if any("rerun" in r or r.get("startup_cpu_s") for r in v)}
            if nets:
                L.append("  client CPU ms/file net of fixed costs (syncer: (pull CPU - do-nothing rerun CPU) / files;"
                         " floor: less its start-up):")
            for name, rr in nets.items():
                reruns = [r["rerun"] for r in rr if "rerun" in r]
                fixed = (f"rerun {fmt(med(reruns, 'client_cpu_s'), 2)} s CPU ({fmt(med(reruns, 'wall_s'), 2)} s wall, "
                         f"{sum(r['ok'] for r in reruns)}/{len(rr)} ok)" if reruns
                         else f"start-up {fmt(med(rr, 'startup_cpu_s'), 2)} s CPU")
                L.append(f"    {name:<32} {fmt(med(rr, 'cpu_ms_per_file'), 2)} ms/file, {fixed}: net "
                         f"{fmt(med(rr, 'net_cpu_ms_per_file'), 2)} ms/file")
            for before, after in ((f"syncer C={C}", f"syncer PATCHED C={C}"),
                                  ("syncer default C", "syncer PATCHED default C")):
                if before in runs and after in runs:
                    L.append(f"  before/after, {before} -> PATCHED: client CPU "
                             f"{fmt(med(runs[before], 'cpu_ms_per_file'), 2)} -> "
                             f"{fmt(med(runs[after], 'cpu_ms_per_file'), 2)} ms/file, net "
                             f"{fmt(med(runs[before], 'net_cpu_ms_per_file'), 2)} -> "
                             f"{fmt(med(runs[after], 'net_cpu_ms_per_file'), 2)} ms/file")
            # issue 17's targets, same run, same server, for syncer at C and (with --patched) the patched copy
            curl = fps.get(f"curl --parallel-max {C}")
            for name in (f"syncer C={C}", f"syncer PATCHED C={C}"):
                x = fps.get(name)
                if x is None:
                    continue
                who = f"(a) {lat} ms: {name.replace('syncer PATCHED', 'PATCHED')}"
                if float(lat) > 0:
                    wrk = d["ceiling"].get(f"wrk -c{C}", {}).get("req_per_s")
                    targets.append(ratio_target(f"{who} >= 1.0x curl --parallel-max {C}", x, curl, 1.0))
                    targets.append(ratio_target(f"{who} >= 0.95 of wrk -c{C}", x, wrk, 0.95))
                else:
                    dur = fps.get(f"aria2c -j{C} + syncfs")
                    targets.append(ratio_target(f"{who} >= 0.4x curl --parallel-max {C}", x, curl, 0.4))
                    targets.append(ratio_target(f"{who} >= 2x aria2c -j{C} + syncfs", x, dur, 2.0))
    b = results.get("b")
    if b and "runs" in b:
        L.append("")
        L.append(f"(b) one file of {b['bytes']:,} bytes into {b['dest']} (MB = 10^6 bytes)")
        L.append(f"  {'peer':<34}{'wall s':>8}{'MB/s':>9}{'x curl':>9}{'client CPU s':>13}{'server CPU s':>13}"
                 f"{'other CPU s':>12}{'peak RSS MiB':>15}")
        mbs = {k: med(v, "mb_per_s") for k, v in b["runs"].items()}
        ref = mbs.get("curl -o")
        for name, rr in b["runs"].items():
            L.append(f"  {name:<34}{fmt(med(rr, 'wall_s'), 2):>8}{fmt(mbs[name]):>9}"
                     f"{fmt(mbs[name] / ref if ref else None, 2):>9}{fmt(med(rr, 'client_cpu_s'), 2):>13}"
                     f"{fmt(med(rr, 'server_cpu_s'), 2):>13}{fmt(med(rr, 'other_cpu_s'), 2):>12}"
                     f"{fmt(max(r['client_maxrss_mib'] for r in rr), 0):>15}")
        s = mbs.get("syncer")
        rss = max(r["client_maxrss_mib"] for r in b["runs"]["syncer"])
        if "syncer PATCHED" in mbs:
            sp = mbs["syncer PATCHED"]
            rp = max(r["client_maxrss_mib"] for r in b["runs"]["syncer PATCHED"])
            targets.append(("(b) PATCHED >= 1.0x curl; RSS < 64 MB",
                            f"{fmt(sp)} MB/s = {fmt(sp / ref if ref else None, 2)}x"
                            f", {rp:.0f} MiB", verdict(bool(ref) and sp >= ref and rp * 1.048576 < 64)))
        targets.append(("(b) syncer >= 1.0x curl MB/s", f"{fmt(s)} vs {fmt(ref)} = {fmt(s / ref if ref else None, 2)}x",
                        verdict(s >= ref if ref else None)))
        targets.append(("(b) syncer peak RSS < 64 MB", f"{rss:.0f} MiB ({rss * 1.048576:.0f} MB)",
                        verdict(rss * 1.048576 < 64)))
    e = results.get("e")
    if e:
        for mode in ("capped", "uncapped"):
            d = e.get(mode)
            if not d or "runs" not in d:
                continue
            L.append("")
            L.append(f"(e) one file of {e['bytes']:,} bytes into {e['dest']}, {mode}: latency {d['latency_ms']} ms, "
                     f"{d['conn_rate_mbps'] or 'no'} MB/s cap a connection (MB = 10^6 bytes)")
            mbs = {k: med(v, "mb_per_s") for k, v in d["runs"].items() if v}
            ref_name = "curl -o" if mode == "capped" else "curl -s | tee | sha256sum"
            ref = mbs.get(ref_name)
            L.append(f"  {'peer':<34}{'wall s':>8}{'MB/s':>9}{'x ' + ref_name[:12]:>16}{'client CPU s':>13}"
                     f"{'server CPU s':>13}{'other CPU s':>12}{'peak RSS MiB':>13}  ok")
            for name, rr in d["runs"].items():
                if not rr:
                    continue
                L.append(f"  {name:<34}{fmt(med(rr, 'wall_s'), 2):>8}{fmt(mbs[name]):>9}"
                         f"{fmt(mbs[name] / ref if ref else None, 2):>16}{fmt(med(rr, 'client_cpu_s'), 2):>13}"
                         f"{fmt(med(rr, 'server_cpu_s'), 2):>13}{fmt(med(rr, 'other_cpu_s'), 2):>12}"
                         f"{fmt(max(r['client_maxrss_mib'] for r in rr), 0):>13}  {sum(r['ok'] for r in rr)}/{len(rr)}")
            s8 = mbs.get("syncer segments=8")
            rss = max((r["client_maxrss_mib"] for r in d["runs"].get("syncer segments=8", [])), default=float("nan"))
            if mode == "capped":
                ar = mbs.get("aria2c -x8 -s8")
                targets.append(("(e) capped: syncer >= 4x curl -o", f"{fmt(s8)} vs {fmt(ref)} MB/s = "
                                f"{fmt(s8 / ref if ref else None, 2)}x", verdict(s8 >= 4 * ref if ref else None)))
                targets.append(("(e) capped: syncer >= 0.9x aria2c -x8 -s8", f"{fmt(s8)} vs {fmt(ar)} MB/s = "
                                f"{fmt(s8 / ar if ar else None, 2)}x", verdict(s8 >= 0.9 * ar if ar else None)))
            else:
                targets.append(("(e) uncapped: syncer >= 1.0x curl | tee | sha256sum",
                                f"{fmt(s8)} vs {fmt(ref)} MB/s = {fmt(s8 / ref if ref else None, 2)}x",
                                verdict(s8 >= ref if ref else None)))
            targets.append((f"(e) {mode}: syncer peak RSS < 64 MB", f"{rss:.0f} MiB ({rss * 1.048576:.0f} MB)",
                            verdict(rss * 1.048576 < 64)))
    c = results.get("c")
    if c:
        L.append("")
        if "error" in c:
            L.append(f"(c) FAILED: {c['error'][-500:]}")
        else:
            L.append(f"(c) manifest with {c['rows']:,} files over {c['targets']:,} targets "
                     f"({c['manifest_mib']:.0f} MiB)")
            L.append(f"  record the listing (plan + insert {c['rows']:,} pending rows): {c['record_listing_s']:.2f} s")
            L.append(f"  record {c['rows']:,} outcomes through the Recorder:           {c['record_outcomes_s']:.2f} s")
            L.append(f"  `syncer status` (subprocess, text / --json):           {c['status_s']:.2f} s / "
                     f"{c['status_json_s']:.2f} s  (python + import syncer.cli alone: {c['python_startup_s']:.2f} s)")
            L.append(f"  do-nothing rerun, listing served from memory (execute + PullJob): {c['rerun_plan_s']:.2f} s")
            targets.append((f"(c) record {c['rows']:,} outcomes < 10 s", f"{c['record_outcomes_s']:.2f} s "
                            f"(+ listing {c['record_listing_s']:.2f} s)", verdict(c["record_outcomes_s"] < 10)))
            targets.append(("(c) `syncer status` < 1 s", f"{c['status_s']:.2f} s", verdict(c["status_s"] < 1)))
            targets.append(("(c) do-nothing rerun planning < 5 s", f"{c['rerun_plan_s']:.2f} s",
                            verdict(c["rerun_plan_s"] < 5)))
    d = results.get("d")
    if d:
        L.append("")
        if "skipped" in d:
            L.append(f"(d) push: SKIPPED: {d['skipped']}")
            targets.append(("(d) push >= 10x sequential curl -F loop", "skipped", "n/a"))
        else:
            L.append(f"(d) push of {d['files']} files (~40 KB) over {d['users']} users at {d['latency_ms']} ms")
            fps = {k: med(v, "files_per_s") for k, v in d["runs"].items()}
            for name, rr in d["runs"].items():
                L.append(f"  {name:<40}{fmt(med(rr, 'wall_s'), 2):>8} s{fmt(fps[name], 1):>9} files/s"
                         f"  client CPU {fmt(med(rr, 'client_cpu_s'), 2)} s"
                         f"  server CPU {fmt(med(rr, 'server_cpu_s'), 2)} s")
            s = fps["syncer push"]
            loop = next(v for k, v in fps.items() if k.startswith("sequential"))
            targets.append(("(d) push >= 10x sequential curl -F loop", f"{fmt(s / loop if loop else None, 1)}x",
                            verdict(s >= 10 * loop if loop else None)))
    L.append("")
    L.append("targets")
    for what, got, v in targets:
        L.append(f"  {v:<5} {what:<62} {got}")
    return "\n".join(L) + "\n"


def tool_versions() -> dict[str, str]:
    out = {}
    for tool, flag in (("aria2c", "--version"), ("curl", "--version"), ("wrk", "-v")):
        if not have(tool):
            out[tool] = "MISSING"
            continue
        p = subprocess.run([tool, flag], capture_output=True, text=True)
        first = (p.stdout or p.stderr).strip().splitlines()[0]
        out[tool] = next((w for w in first.split() if w[:1].isdigit() or "/" in w), first)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts, one repeat: a smoke run")
    ap.add_argument("--repeat", type=int, help="runs of each configuration (default 3; 1 with --quick)")
    ap.add_argument("--only", default="a,b,c,d", help="sections to run, e.g. a,c")
    ap.add_argument("--concurrency", type=int, default=16, help="C for the same-concurrency comparison")
    ap.add_argument("--latencies", default="0,50", help="added server latencies for (a), ms")
    ap.add_argument("--workdir", help="scratch folder (default: a new one under /tmp)")
    ap.add_argument("--disk-dir", help="where (a) and (c) write (default: the workdir, on disk)")
    ap.add_argument("--big-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where (b) writes its 1 GiB (default /dev/shm: tmpfs, as in the issue's figures)")
    ap.add_argument("--syncer-path", help="run syncer from this folder (holding syncer/) instead of the installed one")
    ap.add_argument("--patched", help="also run a patched copy of syncer from this folder, interleaved (A/B)")
    ap.add_argument("--results", default=str(HERE / "results"), help="folder for the .json and .txt")
    args = ap.parse_args()
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.latencies = [float(x) if "." in x else int(x) for x in args.latencies.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="syncer-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    args.disk_dir = args.disk_dir or str(work)
    args.big_dir = args.big_dir or str(work)
    # Every copy of syncer measured runs from compiled bytecode, as an installed one does: with
    # PYTHONDONTWRITEBYTECODE set (as in this project's shells) a tree without __pycache__ would compile
    # some 55 modules on every run (~50 ms), and an A/B would charge that to whichever copy lacks them.
    for tree in {str(REPO), args.syncer_path, args.patched} - {None}:
        subprocess.run([PY, "-m", "compileall", "-q", str(Path(tree) / "syncer")], check=True)
    missing = [t for t in ("aria2c", "curl", "wrk") if not have(t)]
    if missing:
        log(f"missing peers, skipped: {', '.join(missing)}. Install them with: {INSTALL_HINT}")
    host = socket.gethostname()
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M")
    results: dict = {"env": {"date": stamp, "host": host, "cpus": os.cpu_count(), "python": platform.python_version(),
                             "kernel": platform.release(), "repeat": args.repeat, "quick": args.quick,
                             "tools": tool_versions(), "workdir": str(work), "argv": sys.argv[1:]}}
    only = set(args.only.split(","))
    try:
        for key, fn in (("a", section_a), ("b", section_b), ("c", section_c), ("d", section_d), ("e", section_e)):
            if key in only:
                fn(args, work, results)
    finally:
        text = report(results)
        print(text)
        res_dir = Path(args.results)
        res_dir.mkdir(parents=True, exist_ok=True)
        base = res_dir / f"{stamp}-{host}{'-quick' if args.quick else ''}"
        base.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
        base.with_suffix(".txt").write_text(text, encoding="utf-8")
        log(f"wrote {base}.json and .txt")
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
