"""The built-in Files API server in its own process, for the benchmarks (``run_bench.py`` starts it).

Not collected by pytest (no ``test_`` prefix).  Seeds users with files of the given sizes (no visits,
plain names), optionally one big file for one more user, prints one JSON line (base_url, origin,
api_key, account_code, targets, user_tokens, pid, and for the big file its user and size), then
serves until SIGTERM/SIGINT.  Running apart from the client being measured lets the benchmark read
each side's CPU time separately (``/proc/<pid>/stat`` for this one).

    python tests/perf/perf_server.py --users 20 --files-per-user 100 --sizes 32000,40000,48000 --latency-ms 50
"""

from __future__ import annotations

import argparse
import json
import os

from syncer.fakeserver import FakeServer, Faults, run_blocking


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--files-per-user", type=int, default=100)
    p.add_argument("--sizes", default="32000,40000,48000", help="comma-separated sizes, cycled over the files")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--conn-rate-mbps", type=float, default=0.0, help="cap each view answer at this many MB/s")
    p.add_argument("--big-bytes", type=int, default=0, help="add one more user holding one file of this size")
    p.add_argument("--data-dir", help="where the server keeps its files (default: a temp folder)")
    a = p.parse_args()
    sizes = tuple(int(s) for s in a.sizes.split(",") if s)
    srv = FakeServer(seed=a.seed, users=a.users, files_per_user=a.files_per_user, sizes=sizes,
                     hostile_names=False, faults=Faults(latency_ms=a.latency_ms, conn_rate_mbps=a.conn_rate_mbps),
                     data_dir=a.data_dir, link_ttl=4 * 3600)
    big_user = None
    if a.big_bytes:
        big_user = srv.add_user()
        srv.add_file("user", big_user, "scan.bin", size=a.big_bytes, category="user_document")

    def ready(s: FakeServer) -> None:
        users = [u for u in s.users if u != big_user]
        info = {"base_url": s.base_url, "origin": s.origin, "api_key": s.api_key, "account_code": s.account_code,
                "targets": [f"user:{u}" for u in users], "user_tokens": {u: s.user_tokens[u] for u in users},
                "files": len(s.files()), "pid": os.getpid(), "big_user": big_user, "big_bytes": a.big_bytes}
        print(json.dumps(info), flush=True)

    run_blocking(srv, ready)


if __name__ == "__main__":
    main()
