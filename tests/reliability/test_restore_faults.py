"""syncer restore under faults and crashes: zero duplicates, zero missing, counted on the server.

- Faults: the destination stores 20 % of uploads and then drops the connection unanswered, and answers
  500 and 429 to some requests; reruns until a clean exit.  Same account and two accounts.
- Crashes: ``python -m syncer restore`` SIGKILLed at seeded random moments, 10 times, then run to the end.
  After every kill, no document is in the destination twice; at the end every one is there once.
"""

from __future__ import annotations

import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from helpers import cli, write_config
from reliability_util import integrity_ok, start_cli

from syncer.fakeserver import FakeServer, Faults
from syncer.restore.plan import UPLOADABLE, sendable_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from test_restore import dest_docs, expected_in_dest, write_tokens  # noqa: E402

RESTORE_FAULTS = dict(store_then_drop=0.2, error_500=0.05, error_429=0.05, retry_after=0.0)


def config(folder: Path, srv: FakeServer, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(folder, srv, min_wait=0.01, max_wait=0.05, attempts=10, timeout_connect=5, timeout_read=5,
                        push_source="upload", **kw)


def migrate_setup(tmp: Path, src: FakeServer, dst: FakeServer, *, concurrency: int = 4):
    cfg_a = config(tmp / "a", src)
    assert cli(["pull", "-c", str(cfg_a)], token=src.api_key).exit_code == 0
    pairs = {u: dst.add_user() for u in src.users}
    cfg_b = config(tmp / "b", dst, targets=[], push_concurrency=concurrency)
    write_tokens(tmp / "b" / "tokens.csv", {d: dst.token_for(d) for d in pairs.values()})
    users = tmp / "users.csv"
    users.write_text("source_user_id,dest_user_id\n" + "".join(f"{s},{d}\n" for s, d in pairs.items()))
    return cfg_a, cfg_b, pairs, ["restore", "-c", str(cfg_b), "--backup", str(cfg_a), "--user-map", str(users)]


def no_duplicates(src: FakeServer, dst: FakeServer, pairs: dict[str, str]) -> None:
    for s, d in pairs.items():
        extra = dest_docs(dst, d) - expected_in_dest(src, s)
        assert not extra, f"user {d}: stored but not expected (a duplicate?): {extra}"


def all_there_once(src: FakeServer, dst: FakeServer, pairs: dict[str, str]) -> None:
    for s, d in pairs.items():
        assert dest_docs(dst, d) == expected_in_dest(src, s)


def test_two_accounts_under_lost_answers_500_and_429(tmp_path: Path) -> None:
    src = FakeServer(seed=31, users=4, files_per_user=15, visits=1, files_per_visit=2, hostile_names=True,
                     sizes=(0, 300, 8_000, 50_000))
    dst = FakeServer(seed=32, faults=Faults(**RESTORE_FAULTS))
    with src.run_in_thread(), dst.run_in_thread():
        _, _, pairs, args = migrate_setup(tmp_path, src, dst)
        codes = []
        for _ in range(6):
            res = cli(args, token=dst.api_key)
            codes.append(res.exit_code)
            no_duplicates(src, dst, pairs)
            if res.exit_code == 0:
                break
        assert codes[-1] == 0, codes
        all_there_once(src, dst, pairs)
        assert dst.counters["fault_store_then_drop"] >= 5   # the faults did strike


def test_same_account_under_lost_answers(tmp_path: Path) -> None:
    srv = FakeServer(seed=33, users=5, files_per_user=20, sizes=(1, 2_000, 30_000))
    with srv.run_in_thread():
        cfg = config(tmp_path, srv)
        write_tokens(tmp_path / "tokens.csv", {u: srv.token_for(u) for u in srv.users})
        assert cli(["pull", "-c", str(cfg)], token=srv.api_key).exit_code == 0
        before = Counter((f["target_id"], f["name"], f["sha256"], f["category"]) for f in srv.files())
        gone = random.Random(2).sample([f for f in srv.files() if f["category"] in UPLOADABLE], 30)
        for f in gone:
            srv.delete_file(f["id"])
        srv.faults = Faults(**RESTORE_FAULTS)
        for _ in range(6):
            code = cli(["restore", "-c", str(cfg)], token=srv.api_key).exit_code
            now = Counter((f["target_id"], f["name"], f["sha256"], f["category"]) for f in srv.files())
            assert not now - before
            if code == 0:
                break
        assert code == 0
        assert now == before
        assert srv.counters["fault_store_then_drop"] >= 2


def test_ten_sigkills_then_a_full_run(tmp_path: Path) -> None:
    src = FakeServer(seed=41, users=6, files_per_user=40, visits=1, files_per_visit=2, hostile_names=True,
                     sizes=(0, 500, 20_000))
    dst = FakeServer(seed=42, faults=Faults(latency_ms=50, store_then_drop=0.05))
    with src.run_in_thread(), dst.run_in_thread():
        _, cfg_b, pairs, args = migrate_setup(tmp_path, src, dst, concurrency=2)
        rng = random.Random(7)
        landed = partial = 0
        total = sum(sum(expected_in_dest(src, s).values()) for s in pairs)
        for _ in range(10):
            proc = start_cli(args, cwd=tmp_path, token=dst.api_key)
            deadline = time.monotonic() + rng.uniform(0.7, 2.5)
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                landed += 1
            proc.wait(timeout=30)
            if proc.stderr is not None:
                proc.stderr.close()
            no_duplicates(src, dst, pairs)
            partial += 0 < len(dst.files()) < total
            if (tmp_path / "b" / "manifest.sqlite").exists():
                assert integrity_ok(tmp_path / "b" / "manifest.sqlite")
        assert landed >= 8 and partial >= 2   # most kills landed mid-run, some with uploads half done
        res = cli(args, token=dst.api_key)
        assert res.exit_code == 0, res.output
        all_there_once(src, dst, pairs)
        assert any(sendable_name(f["name"]) != f["name"] for f in src.files() if f["target_id"] in pairs)
