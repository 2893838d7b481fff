"""syncer pull into an S3 bucket (moto's server) against a pull into a local folder, in the same run.

    /work/main/.venv/bin/python tests/perf/bench_s3.py                 # (a) and (b), 3 repeats (~5 min)
    /work/main/.venv/bin/python tests/perf/bench_s3.py --only a --repeat 1 --files-per-user 20

Not collected by pytest (no ``test_`` prefix).  Every process is apart, so each side's CPU is known:
syncer's from wait4() (run_bench.measure), the Files API server's and moto's from /proc/<pid>/stat.

(a) 2,000 files of about 40 KB over 20 users at 50 ms of added latency: ``syncer pull`` into a local
    folder and into ``s3://`` (moto), interleaved; the ratio of wall times, and where the time goes:
    syncer's CPU, the API server's, moto's.  moto is Python (werkzeug, one thread per request) on the
    same 2 cores, so a good part of the gap is the S3 server's, not the client's: its CPU seconds say how
    much.
(b) one 1 GiB file into ``s3://``: wall time, MB/s, syncer's peak RSS (must stay under 96 MB: the file is
    streamed into a multipart upload, never held whole).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_bench import PY, REPO, Server, fresh, log, measure, proc_cpu, syncer_env  # noqa: E402

RSS_LIMIT_MIB = 96


class Moto:
    """moto's S3 server in its own process on a free loopback port, with one bucket."""

    def __init__(self, bucket: str = "bench", data_dir: Path | None = None) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        env = dict(os.environ)
        if data_dir is not None:
            env["TMPDIR"] = str(data_dir)  # moto spools big objects to temp files
        self.proc = subprocess.Popen([PY, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        for _ in range(200):
            try:
                urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT"), timeout=2)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("moto did not start")

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def write_config(work: Path, info: dict, dest: str, moto: Moto | None) -> Path:
    lines = ["[api]", f'base_url = "{info["base_url"]}"', f'account_code = "{info["account_code"]}"',
             "[manifest]", f'path = "{work / "manifest.sqlite"}"', "[log]", 'level = "warning"',
             "[pull]", f'dest = "{dest}"', "targets = [" + ", ".join(f'"{t}"' for t in info["targets"]) + "]"]
    if moto is not None:
        lines += ["[s3]", f'endpoint_url = "{moto.endpoint}"', 'region = "us-east-1"']
    cfg = work / "syncer.toml"
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cfg


def s3_env(info: dict) -> dict:
    return dict(syncer_env(info, None), AWS_ACCESS_KEY_ID="bench-key-id", AWS_SECRET_ACCESS_KEY="bench-secret-key",
                AWS_REGION="us-east-1")


_runs = iter(range(1, 10_000))


def run_pull(srv: Server, work: Path, dest_root: Path, moto: Moto | None) -> dict:
    fresh(work)
    n = next(_runs)
    dest = f"s3://{moto.bucket}/run-{n}" if moto else str(fresh(dest_root / f"run-{n}"))
    cfg = write_config(work, srv.info, dest, moto)
    m0 = moto.cpu() if moto else 0.0
    r = measure([PY, "-m", "syncer", "pull", "-c", str(cfg), "-q"], server=srv, cwd=work, env=s3_env(srv.info))
    r["moto_cpu_s"] = (moto.cpu() - m0) if moto else 0.0
    r["ok"] = r["rc"] == 0
    r["other_cpu_s"] = max(0.0, r["other_cpu_s"] - r["moto_cpu_s"])
    return r


def summary(runs: list[dict]) -> dict:
    keys = ("wall_s", "client_cpu_s", "server_cpu_s", "moto_cpu_s", "other_cpu_s", "client_maxrss_mib")
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"ok": all(r["ok"] for r in runs),
                                                                        "n": len(runs)}


def section_a(args, work: Path) -> dict:
    log(f"(a) {args.users} users x {args.files_per_user} files of ~40 KB at {args.latency_ms} ms")
    out: dict = {}
    moto = Moto(data_dir=fresh(work / "moto-a"))
    try:
        with Server(users=args.users, files_per_user=args.files_per_user, latency_ms=args.latency_ms) as srv:
            runs: dict[str, list[dict]] = {"folder": [], "s3 (moto)": []}
            for rep in range(args.repeat):
                for name, m in (("folder", None), ("s3 (moto)", moto)):
                    r = run_pull(srv, work / "w", work / "dest-a", m)
                    runs[name].append(r)
                    log(f"(a) rep {rep + 1} {name}: {r['wall_s']:.2f}s client cpu {r['client_cpu_s']:.2f}s "
                        f"api cpu {r['server_cpu_s']:.2f}s moto cpu {r['moto_cpu_s']:.2f}s "
                        f"rss {r['client_maxrss_mib']:.0f} MiB ok={r['ok']}"
                        + ("" if r["ok"] else f" rc={r['rc']} {r['stderr_tail'][-400:]}"))
            out = {name: summary(rs) for name, rs in runs.items()}
            out["files"] = args.users * args.files_per_user
            out["ratio_wall"] = out["s3 (moto)"]["wall_s"] / out["folder"]["wall_s"]
    finally:
        moto.stop()
        shutil.rmtree(work / "dest-a", ignore_errors=True)
        shutil.rmtree(work / "moto-a", ignore_errors=True)
    return out


def section_b(args, work: Path) -> dict:
    size = args.big_mib << 20
    log(f"(b) one {args.big_mib} MiB file into s3:// (moto)")
    runs: list[dict] = []
    with Server(users=0, files_per_user=0, big_bytes=size, data_dir=fresh(work / "srvdata")) as srv:
        srv.info["targets"] = [f"user:{srv.info['big_user']}"]
        for rep in range(args.repeat):
            moto = Moto(data_dir=fresh(work / "moto-b"))  # a new one each time: it keeps objects in temp files
            try:
                r = run_pull(srv, work / "w", work / "dest-b", moto)
            finally:
                moto.stop()
                shutil.rmtree(work / "moto-b", ignore_errors=True)
            r["mb_per_s"] = size / r["wall_s"] / 1e6
            runs.append(r)
            log(f"(b) rep {rep + 1}: {r['wall_s']:.2f}s {r['mb_per_s']:.0f} MB/s rss {r['client_maxrss_mib']:.0f} MiB "
                f"client cpu {r['client_cpu_s']:.2f}s moto cpu {r['moto_cpu_s']:.2f}s ok={r['ok']}"
                + ("" if r["ok"] else f" rc={r['rc']} {r['stderr_tail'][-400:]}"))
    shutil.rmtree(work / "srvdata", ignore_errors=True)
    out = summary(runs) | {"bytes": size, "mb_per_s": statistics.median(r["mb_per_s"] for r in runs),
                           "max_rss_mib": max(r["client_maxrss_mib"] for r in runs)}
    out["rss_ok"] = out["max_rss_mib"] < RSS_LIMIT_MIB
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="a,b")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--files-per-user", type=int, default=100)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--big-mib", type=int, default=1024)
    p.add_argument("--workdir")
    args = p.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="syncer-bench-s3-"))
    os.chdir(REPO)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count()}
    if "a" in args.only:
        results["a"] = section_a(args, work)
    if "b" in args.only:
        results["b"] = section_b(args, work)
    print(json.dumps(results, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
