"""restore --identity of one big encrypted file: the restore process's peak RSS (it must stay flat: the
plaintext is streamed, never held whole nor written to disk) and its wall time.

    PYTHONPATH=$PWD python tests/perf/bench_restore_encrypted.py 300      # MiB

The built-in server runs in this process; pull and restore run as child processes (``/usr/bin/time -v``
gives the restore's peak RSS).  Everything lives in a temporary folder removed at the end (a throwaway
private key is in it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import write_config  # noqa: E402

from syncer.crypto.identity import keygen  # noqa: E402
from syncer.fakeserver import FakeServer  # noqa: E402

MIB = 1 << 20


def main(size_mib: int) -> None:
    size = size_mib * MIB
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        srv = FakeServer(seed=5, users=1, files_per_user=1, sizes=(size,), max_upload_bytes=2 * size)
        with srv.run_in_thread():
            _, pub = keygen(tmp / "k.txt")
            cfg = write_config(tmp, srv, extra=f"encrypt_to = {json.dumps([pub])}\n")
            tokens = tmp / "tokens.csv"
            tokens.write_text("user_id,token\n" + "".join(f"{u},{srv.token_for(u)}\n" for u in srv.users))
            os.chmod(tokens, 0o600)
            env = dict(os.environ, VSEE_API_TOKEN=srv.api_key, PYTHONPATH=str(ROOT))
            subprocess.run([sys.executable, "-m", "syncer", "pull", "-q", "-c", str(cfg)], env=env, check=True,
                           cwd=tmp)
            big = max((f for f in srv.files() if f["target_type"] == "user"), key=lambda f: f["size"])
            srv.delete_file(big["id"])
            started = time.monotonic()
            out = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "syncer", "restore", "-q", "-c",
                                  str(cfg), "--tokens-file", str(tokens), "--identity", str(tmp / "k.txt")],
                                 env=env, capture_output=True, text=True, cwd=tmp)
            elapsed = time.monotonic() - started
            rss = next(line for line in out.stderr.splitlines() if "Maximum resident" in line).split()[-1]
            back = [f for f in srv.files() if f["sha256"] == big["sha256"]]
            print(f"restore --identity of one {big['size'] >> 20} MiB encrypted file: exit {out.returncode},"
                  f" {elapsed:.1f} s, peak RSS {int(rss) // 1024} MiB, restored byte-identical: {len(back) == 1}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
