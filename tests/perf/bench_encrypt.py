"""Encryption at rest, what it costs: syncer pull encrypted (age, one recipient) against syncer pull
plain, in the same run against the same server, interleaved, median of --repeat runs.

    PYTHONPATH=$PWD /work/main/.venv/bin/python tests/perf/bench_encrypt.py            # (a) and (b)
    ... --only a --repeat 5         # or --quick: small counts, one repeat

(a) 2,000 files of about 40 KB over 20 users, 50 ms of added latency, C=16: target encrypted >= 0.95x
    the plain files/s.
(b) one 1 GiB file: target encrypted >= 0.8x the plain MB/s, and the encrypted run's peak RSS < 64 MB.

Each run is a fresh ``python -m syncer pull`` subprocess (start-up, listing, manifest, fsyncs and all),
measured by tests/perf/run_bench.py's ``measure`` (wall time, CPU from wait4, peak RSS, the server's
CPU, and the other processes' CPU meanwhile: a loaded machine shows there).  Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run_bench as rb  # noqa: E402 - the benchmark plumbing lives there

TARGET_A, TARGET_B, RSS_LIMIT_MB = 0.95, 0.80, 64


def make_recipient(work: Path) -> str:
    sys.path.insert(0, str(rb.REPO))
    from syncer.crypto.identity import keygen

    key = work / "bench-key.txt"
    if key.exists():
        key.unlink()
    return keygen(key)[1]


def pull(srv: rb.Server, work: Path, dest_root: Path, concurrency: int | None, targets: list[str] | None,
         recipient: str | None, expect: int, src: str | None) -> dict:
    rb.fresh(work)
    dest = rb.new_dest(dest_root)
    cfg = rb.write_syncer_config(work, srv.info, targets or srv.info["targets"], dest, concurrency)
    if recipient:
        with open(cfg, "a", encoding="utf-8") as f:  # the [pull] section is the file's last
            f.write(f'encrypt_to = ["{recipient}"]\n')
    r = rb.measure([rb.PY, "-m", "syncer", "pull", "-c", str(cfg), "-q"], server=srv, cwd=work,
                   env=rb.syncer_env(srv.info, src))
    r["files"], r["bytes"] = rb.count_files(dest)
    r["ok"] = r["rc"] == 0 and r["files"] == expect
    if recipient:
        r["ok"] = r["ok"] and all(p.name.endswith(".age") for p in dest.rglob("*") if p.is_file()
                                  and not p.name.endswith(".sqlite"))
    return r


def interleave(peers: dict, repeat: int, label: str, rate) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {k: [] for k in peers}
    for rep in range(repeat):
        for name, fn in peers.items():
            r = fn()
            r["rate"] = rate(r) if r["ok"] else None
            runs[name].append(r)
            rb.log(f"{label} rep {rep + 1} {name}: {r['wall_s']:.2f}s rate {r['rate'] or 0:.1f} "
                   f"rss {r['client_maxrss_mib']:.0f} MiB cpu {r['client_cpu_s']:.2f} other {r['other_cpu_s']:.1f}"
                   + ("" if r["ok"] else f" FAILED rc={r['rc']} {r['stderr_tail'][-300:]}"))
    return runs


def summary(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for name, rr in runs.items():
        rates = [r["rate"] for r in rr if r["rate"]]
        out[name] = {"median_rate": statistics.median(rates) if rates else None,
                     "rates": rates, "max_rss_mib": max(r["client_maxrss_mib"] for r in rr),
                     "median_cpu_s": statistics.median(r["client_cpu_s"] for r in rr),
                     "median_other_cpu_s": statistics.median(r["other_cpu_s"] for r in rr)}
    return out


def section_a(args, work: Path, recipient: str, results: dict) -> None:
    users, per_user = (4, 25) if args.quick else (20, 100)
    n = users * per_user
    dest_root = work / "bench-a"
    with rb.Server(users=users, files_per_user=per_user, latency_ms=50) as srv:
        peers = {name: (lambda rec=rec: pull(srv, work / "s", dest_root, 16, None, rec, n, args.syncer_path))
                 for name, rec in (("plain", None), ("encrypted", recipient))}
        runs = interleave(peers, args.repeat, "(a)", lambda r: n / r["wall_s"])
    s = summary(runs)
    ratio = (s["encrypted"]["median_rate"] or 0) / (s["plain"]["median_rate"] or float("inf"))
    results["a"] = {"files": n, "latency_ms": 50, "concurrency": 16, "summary": s, "ratio": ratio,
                    "target": TARGET_A, "met": ratio >= TARGET_A, "runs": runs}
    rb.shutil.rmtree(dest_root, ignore_errors=True)


def section_b(args, work: Path, recipient: str, results: dict) -> None:
    size = 64 * 2**20 if args.quick else 2**30
    dest_root = Path(args.big_dir) / "syncer-bench-enc-b"
    with rb.Server(users=0, files_per_user=0, big_bytes=size, data_dir=rb.fresh(work / "srvdata")) as srv:
        target = [f"user:{srv.info['big_user']}"]

        def one(rec: str | None) -> dict:
            r = pull(srv, work / "s", dest_root, None, target, rec, 1, args.syncer_path)
            rb.shutil.rmtree(dest_root, ignore_errors=True)
            return r

        peers = {"plain": lambda: one(None), "encrypted": lambda: one(recipient)}
        if args.ab:  # an A/B: the same encrypted pull with another copy of syncer (e.g. a patched one)
            def other() -> dict:
                r = pull(srv, work / "s", dest_root, None, target, recipient, 1, args.ab)
                rb.shutil.rmtree(dest_root, ignore_errors=True)
                return r
            peers["encrypted B"] = other
        runs = interleave(peers, args.repeat, "(b)", lambda r: size / r["wall_s"] / 1e6)
    rb.shutil.rmtree(work / "srvdata", ignore_errors=True)
    s = summary(runs)
    ratio = (s["encrypted"]["median_rate"] or 0) / (s["plain"]["median_rate"] or float("inf"))
    rss = s["encrypted"]["max_rss_mib"] * 1.048576  # MiB -> MB
    results["b"] = {"bytes": size, "summary": s, "ratio": ratio, "target": TARGET_B,
                    "encrypted_peak_rss_mb": rss, "rss_limit_mb": RSS_LIMIT_MB,
                    "met": ratio >= TARGET_B and rss < RSS_LIMIT_MB, "runs": runs}


def render(results: dict) -> str:
    lines = [f"bench_encrypt {results['started']} on {results['host']} (load at start: {results['loadavg']})"]
    if "a" in results:
        a = results["a"]
        s = a["summary"]
        lines.append(f"(a) {a['files']} files x ~40 KB, 50 ms, C=16: plain {s['plain']['median_rate']:.0f} files/s, "
                     f"encrypted {s['encrypted']['median_rate']:.0f} files/s -> {a['ratio']:.2f}x "
                     f"(target >= {a['target']}: {'met' if a['met'] else 'NOT met'}); client CPU "
                     f"{s['plain']['median_cpu_s']:.2f} vs {s['encrypted']['median_cpu_s']:.2f} s; other processes' "
                     f"CPU meanwhile {s['plain']['median_other_cpu_s']:.1f} / "
                     f"{s['encrypted']['median_other_cpu_s']:.1f} s")
    if "b" in results:
        b = results["b"]
        s = b["summary"]
        lines.append(f"(b) {b['bytes'] >> 20} MiB: plain {s['plain']['median_rate']:.0f} MB/s, encrypted "
                     f"{s['encrypted']['median_rate']:.0f} MB/s -> {b['ratio']:.2f}x (target >= {b['target']}); "
                     f"encrypted peak RSS {b['encrypted_peak_rss_mb']:.0f} MB (limit {b['rss_limit_mb']}): "
                     f"{'met' if b['met'] else 'NOT met'}; client CPU {s['plain']['median_cpu_s']:.1f} vs "
                     f"{s['encrypted']['median_cpu_s']:.1f} s; other processes' CPU meanwhile "
                     f"{s['plain']['median_other_cpu_s']:.1f} / {s['encrypted']['median_other_cpu_s']:.1f} s")
        if "encrypted B" in s:
            lines.append(f"    A/B: encrypted B {s['encrypted B']['median_rate']:.0f} MB/s, client CPU "
                         f"{s['encrypted B']['median_cpu_s']:.1f} s, "
                         f"peak RSS {s['encrypted B']['max_rss_mib']:.0f} MiB")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts, one repeat")
    ap.add_argument("--repeat", type=int, help="runs of each configuration (default 3; 1 with --quick)")
    ap.add_argument("--only", default="a,b", help="sections: a, b or a,b")
    ap.add_argument("--workdir", help="scratch folder (default: a new one under /tmp)")
    ap.add_argument("--big-dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                    help="where (b) writes its 1 GiB (default /dev/shm: the disk is not what is measured)")
    ap.add_argument("--syncer-path", default=str(rb.REPO), help="run syncer from this folder (default: this checkout)")
    ap.add_argument("--results", default=str(HERE / "results"), help="folder for the .json and .txt")
    ap.add_argument("--ab", help="(b) also runs encrypted with syncer from this folder, interleaved (A/B)")
    args = ap.parse_args()
    args.repeat = args.repeat or (1 if args.quick else 3)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="syncer-bench-enc-"))
    args.big_dir = args.big_dir or str(work)
    results: dict = {"started": time.strftime("%Y-%m-%dT%H%M"), "host": rb.platform.node(),
                     "loadavg": open("/proc/loadavg").read().split()[:3], "repeat": args.repeat}
    recipient = make_recipient(work)
    try:
        if "a" in args.only:
            section_a(args, work, recipient, results)
        if "b" in args.only:
            section_b(args, work, recipient, results)
    finally:
        if not args.workdir:  # a folder of our own, with a throwaway private key in it: never left behind
            rb.shutil.rmtree(work, ignore_errors=True)
    text = render(results)
    print(text)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{results['started']}-encrypt{'-quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    stem.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
