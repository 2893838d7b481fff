"""syncer restore against the built-in server over loopback: same account and two accounts, exactly once.

Every check counts the server's own stored files (per user, by name, sha256 and category), so a
duplicate or a missing document cannot hide behind the manifest's view of things.  Two FakeServer
instances are two accounts.
"""

from __future__ import annotations

import csv
import os
import random
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from helpers import cli, write_config

from syncer.fakeserver import FakeServer
from syncer.restore.plan import NOT_RESTORABLE, UPLOADABLE, sendable_name


def write_tokens(path: Path, tokens: dict[str, str]) -> Path:
    path.write_text("user_id,token\n" + "".join(f"{u},{t}\n" for u, t in tokens.items()), encoding="utf-8")
    os.chmod(path, 0o600)
    return path


def user_docs(srv: FakeServer, user: str | None = None) -> Counter[tuple[str, str, str, str]]:
    """(user, name, sha256, category) of every document held by a user target."""
    return Counter((f["target_id"], f["name"], f["sha256"], f["category"]) for f in srv.files()
                   if f["target_type"] == "user" and (user is None or f["target_id"] == user))


def query(db: Path, sql: str, *args: object) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def config(folder: Path, srv: FakeServer, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    kw.setdefault("attempts", 6)
    return write_config(folder, srv, min_wait=0.01, max_wait=0.05, push_source="upload", **kw)


def last_pull_done(db: Path) -> int:
    return query(db, "SELECT files_done FROM runs WHERE kind = 'pull' ORDER BY started DESC LIMIT 1")[0][0]


# -- same account ----------------------------------------------------------------------------------

def test_same_account_restores_exactly_the_deleted_documents(tmp_path: Path) -> None:
    srv = FakeServer(seed=11, users=5, files_per_user=20, visits=1, files_per_visit=2,
                     sizes=(0, 10, 3_000, 40_000))
    with srv.run_in_thread():
        cfg = config(tmp_path, srv)
        write_tokens(tmp_path / "tokens.csv", {u: srv.token_for(u) for u in srv.users})
        assert cli(["pull", "-c", str(cfg)], token=srv.api_key).exit_code == 0
        before = user_docs(srv)
        deletable = [f for f in srv.files() if f["target_type"] == "user" and f["category"] in UPLOADABLE]
        gone = random.Random(1).sample(deletable, 7)
        for f in gone:
            srv.delete_file(f["id"])
        count_after_delete = len(srv.files())

        mapping = tmp_path / "ids.csv"
        res = cli(["restore", "-c", str(cfg), "--mapping-out", str(mapping)], token=srv.api_key)
        assert res.exit_code == 0, res.output
        assert user_docs(srv) == before                      # the 7 are back: names, bytes, categories
        assert len(srv.files()) == count_after_delete + 7    # and nothing else was uploaded
        assert NOT_RESTORABLE in res.output                  # the visit's files are reported, not failed
        with mapping.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert {r["source_file_id"] for r in rows} == {f["id"] for f in gone}
        assert all(r["dest_file_id"] and r["dest_file_id"] not in {g["id"] for g in gone} for r in rows)
        assert (mapping.stat().st_mode & 0o777) == 0o600
        new_ids = {r["dest_file_id"] for r in rows}
        for f in gone:
            new = next(n for n in srv.files() if n["id"] in new_ids and n["sha256"] == f["sha256"]
                       and n["name"] == f["name"])
            assert (new["category"], new["target_id"]) == (f["category"], f["target_id"])

        res = cli(["restore", "-c", str(cfg)], token=srv.api_key)   # a rerun uploads nothing
        assert res.exit_code == 0, res.output
        assert len(srv.files()) == count_after_delete + 7

        backup_files = sum(len(fs) for _, _, fs in os.walk(tmp_path / "backup"))
        assert cli(["pull", "-c", str(cfg)], token=srv.api_key).exit_code == 0
        assert last_pull_done(tmp_path / "manifest.sqlite") == 0   # the next pull fetches nothing
        assert sum(len(fs) for _, _, fs in os.walk(tmp_path / "backup")) == backup_files
        relinked = query(tmp_path / "manifest.sqlite", "SELECT count(*) FROM events WHERE event = 'relinked'")[0][0]
        assert relinked == 7
        assert cli(["verify", "-c", str(cfg), "--all"]).exit_code == 0
        st = cli(["status", "-c", str(cfg), "--json"])
        assert '"restore"' in st.output and all(f["id"] in st.output for f in gone)


# -- two accounts ------------------------------------------------------------------------------------

def two_accounts(tmp: Path, *, seed: int = 21, users: int = 3, files_per_user: int = 6, faults=None):
    src = FakeServer(seed=seed, users=users, files_per_user=files_per_user, visits=2, files_per_visit=3,
                     hostile_names=True, sizes=(0, 100, 5_000, 30_000))
    dst = FakeServer(seed=seed + 1000, faults=faults)
    return src, dst


def expected_in_dest(src: FakeServer, user: str) -> Counter[tuple[str, str, str]]:
    return Counter((sendable_name(f["name"]), f["sha256"], f["category"]) for f in src.files()
                   if f["target_type"] == "user" and f["target_id"] == user and f["category"] in UPLOADABLE)


def dest_docs(dst: FakeServer, user: str) -> Counter[tuple[str, str, str]]:
    return Counter((f["name"], f["sha256"], f["category"]) for f in dst.files()
                   if f["target_type"] == "user" and f["target_id"] == user)


def setup_migration(tmp: Path, src: FakeServer, dst: FakeServer, *, mapped: int | None = None,
                    concurrency: int | None = None, attempts: int = 6) -> tuple[Path, Path, dict[str, str]]:
    cfg_a = config(tmp / "a", src)
    assert cli(["pull", "-c", str(cfg_a)], token=src.api_key).exit_code == 0
    pairs = {u: dst.add_user() for u in src.users[: mapped if mapped is not None else len(src.users)]}
    cfg_b = config(tmp / "b", dst, targets=[], push_concurrency=concurrency, attempts=attempts)
    write_tokens(tmp / "b" / "tokens.csv", {d: dst.token_for(d) for d in pairs.values()})
    (tmp / "users.csv").write_text("source_user_id,dest_user_id\n" + "".join(f"{s},{d}\n" for s, d in pairs.items()))
    return cfg_a, cfg_b, pairs


def test_two_accounts_with_a_user_map(tmp_path: Path) -> None:
    src, dst = two_accounts(tmp_path)
    with src.run_in_thread(), dst.run_in_thread():
        cfg_a, cfg_b, pairs = setup_migration(tmp_path, src, dst, mapped=2)
        dst.add_file("user", next(iter(pairs.values())), "unrelated.pdf", b"already in B")
        unmapped = src.users[2]
        mapping = tmp_path / "ids.csv"
        res = cli(["restore", "-c", str(cfg_b), "--backup", str(cfg_a), "--user-map", str(tmp_path / "users.csv"),
                   "--mapping-out", str(mapping)], token=dst.api_key)
        assert res.exit_code == 0, res.output
        for s, d in pairs.items():
            assert dest_docs(dst, d) == expected_in_dest(src, s) + Counter(
                {("unrelated.pdf", __import__("hashlib").sha256(b"already in B").hexdigest(), "user_document"): 1}
                if d == next(iter(pairs.values())) else {})
        assert NOT_RESTORABLE in res.output
        assert "not in the user map" in res.output and unmapped in res.output
        visits_in_b = [f for f in dst.files() if f["target_type"] == "visit"]
        assert not visits_in_b
        with mapping.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        restored = sum(sum(expected_in_dest(src, s).values()) for s in pairs)
        assert len(rows) == restored
        by_id = {f["id"]: f for f in src.files()}
        for r in rows:
            old = by_id[r["source_file_id"]]
            assert r["source_target"] == f"user:{old['target_id']}" and r["dest_user_id"] == pairs[old["target_id"]]
            assert (r["name"], r["sha256"], int(r["size"])) == (old["name"], old["sha256"], old["size"])
            assert r["sent_name"] == sendable_name(old["name"])
            new = next(f for f in dst.files() if f["id"] == r["dest_file_id"])
            assert (new["name"], new["sha256"]) == (r["sent_name"], old["sha256"])
        assert any(r["name"] != r["sent_name"] for r in rows)     # control characters were substituted
        assert any('\\' in r["name"] for r in rows)                 # backslashes travel as they are
        total = len(dst.files())

        # A rerun sends nothing; so does one whose restore manifest was lost: everything is adopted.
        assert cli(["restore", "-c", str(cfg_b), "--backup", str(cfg_a), "--user-map",
                    str(tmp_path / "users.csv")], token=dst.api_key).exit_code == 0
        assert len(dst.files()) == total
        for p in (tmp_path / "b").glob("manifest.sqlite*"):
            p.unlink()
        res = cli(["restore", "-c", str(cfg_b), "--backup", str(cfg_a), "--user-map", str(tmp_path / "users.csv"),
                   "--mapping-out", str(mapping)], token=dst.api_key)
        assert res.exit_code == 0, res.output
        assert len(dst.files()) == total
        adopted = query(tmp_path / "b" / "manifest.sqlite", "SELECT count(*), sum(adopted) FROM restore_items"
                        " WHERE state = 'done'")[0]
        assert adopted == (restored, restored)
        with mapping.open(newline="", encoding="utf-8") as f:
            assert len(list(csv.DictReader(f))) == restored


def test_dry_run_sends_and_writes_nothing(tmp_path: Path) -> None:
    src, dst = two_accounts(tmp_path)
    with src.run_in_thread(), dst.run_in_thread():
        cfg_a, cfg_b, pairs = setup_migration(tmp_path, src, dst)
        res = cli(["restore", "-c", str(cfg_b), "--backup", str(cfg_a), "--user-map", str(tmp_path / "users.csv"),
                   "--dry-run"], token=dst.api_key)
        assert res.exit_code == 0, res.output
        assert not dst.files()
        assert not (tmp_path / "b" / "manifest.sqlite").exists()
        for s, d in pairs.items():
            n = sum(expected_in_dest(src, s).values())
            assert f"user:{s} -> user:{d}\t{n} files" in res.output
        assert NOT_RESTORABLE in res.output
        # A destination user without a token: a real run would fail those files, so the dry run says so and
        # exits 1, as a pull's or a push's dry run does.
        rest = list(pairs.values())[1:]
        write_tokens(tmp_path / "b" / "tokens.csv", {d: dst.token_for(d) for d in rest})
        res = cli(["restore", "-c", str(cfg_b), "--backup", str(cfg_a), "--user-map", str(tmp_path / "users.csv"),
                   "--dry-run"], token=dst.api_key)
        n = sum(expected_in_dest(src, next(iter(pairs))).values())
        assert res.exit_code == 1 and f"no token: these {n} files would fail" in res.output, res.output
        assert f"{n} files would fail" in res.output.splitlines()[-1] and not dst.files()


def test_a_user_asked_for_by_name_but_missing_from_the_user_map_is_a_failure(tmp_path: Path) -> None:
    src, dst = two_accounts(tmp_path, users=3, files_per_user=3)
    with src.run_in_thread(), dst.run_in_thread():
        cfg_a, cfg_b, pairs = setup_migration(tmp_path, src, dst, mapped=2)
        unmapped = src.users[2]
        base = ["restore", "-c", str(cfg_b), "--backup", str(cfg_a), "--user-map", str(tmp_path / "users.csv")]
        res = cli([*base, "--target", f"user:{unmapped}"], token=dst.api_key)
        assert res.exit_code == 1 and "3 failed (retried next run)" in res.output and not dst.files(), res.output
        assert "0 files left out" not in res.output and "left out by rule" not in res.output  # failed, not both
        # Without --target the map narrows the migration: the unmapped user is reported, not a failure.
        res = cli(base, token=dst.api_key)
        assert res.exit_code == 0 and "not in the user map" in res.output, res.output


# -- bad input -----------------------------------------------------------------------------------------

def test_bad_input(tmp_path: Path) -> None:
    src, dst = two_accounts(tmp_path, users=2, files_per_user=3)
    with src.run_in_thread(), dst.run_in_thread():
        cfg_a, cfg_b, pairs = setup_migration(tmp_path, src, dst)
        users_csv = str(tmp_path / "users.csv")
        base = ["restore", "-c", str(cfg_b), "--backup", str(cfg_a)]

        res = cli(base, token=dst.api_key)  # two accounts, no map
        assert res.exit_code == 2 and "--user-map" in res.output
        dup = tmp_path / "dup.csv"
        dup.write_text("source_user_id,dest_user_id\n" + "".join(f"{s},{d}\n" for s, d in pairs.items())
                       + f"{src.users[0]},someone\n")
        res = cli([*base, "--user-map", str(dup)], token=dst.api_key)
        assert res.exit_code == 2 and f"dup.csv:{len(pairs) + 2}" in res.output and "twice" in res.output
        res = cli([*base, "--user-map", users_csv, "--target", f"visit:{src.visits[0]}"], token=dst.api_key)
        assert res.exit_code == 2 and NOT_RESTORABLE in res.output
        missing = config(tmp_path / "nobackup", src)
        res = cli(["restore", "-c", str(cfg_b), "--backup", str(missing), "--user-map", users_csv], token=dst.api_key)
        assert res.exit_code == 2 and "does not exist" in res.output
        assert not dst.files()

        # A destination user without a token: its files fail (exit 1), the others are restored.
        s0, s1 = src.users
        write_tokens(tmp_path / "b" / "tokens.csv", {pairs[s1]: dst.token_for(pairs[s1])})
        res = cli([*base, "--user-map", users_csv], token=dst.api_key)
        assert res.exit_code == 1 and f"user {pairs[s0]} has no token" in res.output
        assert not dest_docs(dst, pairs[s0]) and dest_docs(dst, pairs[s1]) == expected_in_dest(src, s1)

        # A changed backed-up file: a failed item naming the file id; nothing is sent for it.
        write_tokens(tmp_path / "b" / "tokens.csv", {d: dst.token_for(d) for d in pairs.values()})
        db = tmp_path / "a" / "manifest.sqlite"
        fid, rel = query(db, "SELECT file_id, local_path FROM pull_items WHERE target_id = ? AND size > 0"
                             " AND category = 'user_document' LIMIT 1", s0)[0]
        (tmp_path / "a" / "backup" / rel).write_bytes(b"tampered")
        res = cli([*base, "--user-map", users_csv], token=dst.api_key)
        assert res.exit_code == 1 and fid in res.output
        want = expected_in_dest(src, s0)
        got = dest_docs(dst, pairs[s0])
        assert sum(want.values()) - sum(got.values()) == 1 and not got - want
        st = cli(["status", "-c", str(cfg_b), "--json"])
        assert fid in st.output
        assert dest_docs(dst, pairs[s1]) == expected_in_dest(src, s1)   # nothing duplicated


@pytest.mark.parametrize("flag", ["--category=intake_attachment"])
def test_visit_category_is_refused(tmp_path: Path, flag: str) -> None:
    srv = FakeServer(seed=3, users=1, files_per_user=1)
    with srv.run_in_thread():
        cfg = config(tmp_path, srv)
        write_tokens(tmp_path / "tokens.csv", {u: srv.token_for(u) for u in srv.users})
        assert cli(["pull", "-c", str(cfg)], token=srv.api_key).exit_code == 0
        res = cli(["restore", "-c", str(cfg), flag], token=srv.api_key)
        assert res.exit_code == 2 and NOT_RESTORABLE in res.output


async def test_the_demo_restores_two_deleted_documents(tmp_path: Path) -> None:
    from syncer.demo import run_demo

    result = await run_demo(tmp_path / "demo")
    assert result.ok, (result.restore_mismatches, result.pull_mismatches, result.push_mismatches)
    assert result.restore is not None and result.restore_code == 0
    assert result.restore_verified == 2 == result.restore.files_done
    mapping = (tmp_path / "demo" / "restored-ids.csv").read_text(encoding="utf-8").splitlines()
    assert len(mapping) == 3 and mapping[0].startswith("source_target,source_file_id,dest_user_id,dest_file_id")


def test_logs_and_metrics_name_no_file_and_no_token(tmp_path: Path) -> None:
    src, dst = two_accounts(tmp_path, users=2, files_per_user=4)
    with src.run_in_thread(), dst.run_in_thread():
        cfg_a, cfg_b, pairs = setup_migration(tmp_path, src, dst)
        metrics = tmp_path / "restore.prom"
        res = cli(["restore", "-c", str(cfg_b), "--backup", str(cfg_a), "--user-map", str(tmp_path / "users.csv"),
                   "--log-format", "json", "--log-level", "info", "--metrics-file", str(metrics)],
                  token=dst.api_key)
        assert res.exit_code == 0, res.output
        text = res.output + (res.stderr if res.stderr_bytes is not None else "")
        names = {f["name"] for f in src.files() if len(f["name"]) >= 6}
        assert "not_restored" in text and "restore ok" in text   # the logs and the summary are there
        assert names and not [n for n in names if n in text]
        for secret in [dst.api_key, *(dst.token_for(d) for d in pairs.values())]:
            assert secret not in text
        assert 'syncer_files_done{kind="restore"}' in metrics.read_text()
        assert (metrics.stat().st_mode & 0o777) == 0o600


def test_a_pull_between_an_interrupted_restore_and_its_rerun_duplicates_nothing(tmp_path: Path) -> None:
    srv = FakeServer(seed=12, users=2, files_per_user=5, sizes=(10, 2_000))
    with srv.run_in_thread():
        cfg = config(tmp_path, srv)
        db = tmp_path / "manifest.sqlite"
        write_tokens(tmp_path / "tokens.csv", {u: srv.token_for(u) for u in srv.users})
        assert cli(["pull", "-c", str(cfg)], token=srv.api_key).exit_code == 0
        gone = [f for f in srv.files() if f["category"] == "user_document"][:2]
        for f in gone:
            srv.delete_file(f["id"])
        assert cli(["restore", "-c", str(cfg)], token=srv.api_key).exit_code == 0
        # As if killed after both POSTs were stored and before they were recorded; then a nightly pull
        # backs the two restored documents up as new ones (nothing links them to the old ids yet).
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("UPDATE restore_items SET state = 'uploading', dest_file_id = NULL, restored_at = NULL")
        conn.close()
        assert cli(["pull", "-c", str(cfg)], token=srv.api_key).exit_code == 0
        assert last_pull_done(db) == 2
        count = len(srv.files())
        res = cli(["restore", "-c", str(cfg)], token=srv.api_key)
        assert res.exit_code == 0, res.output
        assert len(srv.files()) == count                      # the stored uploads were found, not sent again
        assert query(db, "SELECT count(*), sum(adopted) FROM restore_items WHERE state = 'done'")[0] == (2, 2)


def test_a_file_refused_for_good_keeps_every_restore_red(tmp_path: Path) -> None:
    # Issue 12 for restore: a document the destination refused (413) is not sent again while unchanged,
    # but a later run must not go green while it is not restored.
    srv = FakeServer(seed=12, users=1, files_per_user=4, visits=0, sizes=(3_000, 40_000))
    with srv.run_in_thread():
        cfg = config(tmp_path, srv)
        write_tokens(tmp_path / "tokens.csv", {u: srv.token_for(u) for u in srv.users})
        assert cli(["pull", "-c", str(cfg)], token=srv.api_key).exit_code == 0
        big = next(f for f in srv.files() if f["size"] == 40_000 and f["category"] in UPLOADABLE)
        srv.delete_file(big["id"])
        srv.max_upload_bytes = 10_000
        metrics = tmp_path / "restore.prom"
        for run in (1, 2):
            res = cli(["restore", "-c", str(cfg), "--metrics-file", str(metrics)], token=srv.api_key)
            assert res.exit_code == 1, f"run {run}: {res.output}"
            prom = metrics.read_text()
            assert 'syncer_last_run_success{kind="restore"} 0' in prom, prom
            assert 'syncer_items_failed{kind="restore",reason="TooLargeError"} 1' in prom, prom
        assert srv.counters["upload_413"] == 1  # refused once, not sent again
