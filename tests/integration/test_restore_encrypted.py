"""restore --identity (issues 14 and 15): an encrypted backup (.age files) restores its plaintext, checked
against the manifest before anything is sent and never written to disk.  The built-in server over
loopback, the real CLI."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from collections import Counter
from pathlib import Path

import pyrage
from helpers import cli, write_config

from syncer.crypto.identity import keygen
from syncer.fakeserver import FakeServer
from syncer.restore.plan import UPLOADABLE
from syncer.restore.reader import HOLD_BYTES

MIB = 1 << 20


def write_tokens(path: Path, tokens: dict[str, str]) -> Path:
    path.write_text("user_id,token\n" + "".join(f"{u},{t}\n" for u, t in tokens.items()), encoding="utf-8")
    os.chmod(path, 0o600)
    return path


def user_docs(srv: FakeServer) -> Counter[tuple[str, str, str, str]]:
    return Counter((f["target_id"], f["name"], f["sha256"], f["category"]) for f in srv.files()
                   if f["target_type"] == "user")


def rows(db: Path) -> dict[str, dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return {r["file_id"]: dict(r) for r in conn.execute("SELECT * FROM pull_items")}
    finally:
        conn.close()


def encrypted_backup(tmp: Path, srv: FakeServer) -> tuple[Path, Path]:
    """Pull ``srv`` encrypted to a new key; the config and the key file."""
    key = tmp / "key.txt"
    _, public = keygen(key)
    cfg = write_config(tmp, srv, min_wait=0.01, max_wait=0.05, attempts=4,
                       extra=f"encrypt_to = {json.dumps([public])}\n")
    write_tokens(tmp / "tokens.csv", {u: srv.token_for(u) for u in srv.users})
    res = cli(["pull", "-q", "-c", str(cfg)], token=srv.api_key)
    assert res.exit_code == 0, res.output
    assert {r["encrypted"] for r in rows(tmp / "manifest.sqlite").values()} == {1}
    return cfg, key


def restore(tmp: Path, cfg: Path, srv: FakeServer, *args: str):
    return cli(["restore", "-c", str(cfg), "--tokens-file", str(tmp / "tokens.csv"), *args], token=srv.api_key)


def restorable(srv: FakeServer) -> list[dict]:
    return [f for f in srv.files() if f["target_type"] == "user" and f["category"] in UPLOADABLE]


def test_same_account_restore_from_an_encrypted_backup_then_a_rerun_sends_nothing(tmp_path: Path) -> None:
    srv = FakeServer(seed=41, users=3, files_per_user=10, sizes=(10, 3_000, 0, 40_000, 5 * MIB))
    with srv.run_in_thread():
        cfg, key = encrypted_backup(tmp_path, srv)
        before = user_docs(srv)
        docs = restorable(srv)
        big = [f for f in docs if f["size"] > HOLD_BYTES]
        assert big, "no file above HOLD_BYTES: the streamed path would go untested"
        gone = random.Random(2).sample([f for f in docs if f["size"] <= HOLD_BYTES], 6) + big[:2]
        for f in gone:
            srv.delete_file(f["id"])
        count = len(srv.files())

        res = restore(tmp_path, cfg, srv, "--identity", str(key))
        assert res.exit_code == 0, res.output
        assert user_docs(srv) == before                   # names, bytes (sha256), categories identical
        assert len(srv.files()) == count + len(gone)       # and nothing else was sent
        # Plaintext never reached the disk: no file under the work folder holds a window of any file.
        windows = [srv.file_bytes(f["id"])[i:i + 64] for f in srv.files() if f["size"] >= 64
                   for i in (0, f["size"] // 2)]
        for p in tmp_path.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                assert not any(w in data for w in windows), p.name

        res = restore(tmp_path, cfg, srv, "--identity", str(key))  # a rerun
        assert res.exit_code == 0, res.output
        assert len(srv.files()) == count + len(gone)
        res = cli(["pull", "-q", "-c", str(cfg)], token=srv.api_key)   # the restored ones are relinked
        assert res.exit_code == 0, res.output
        assert cli(["verify", "--all", "--decrypt", "--identity", str(key), "-c", str(cfg)]).exit_code == 0


def test_wrong_key_missing_identity_and_loose_permissions_are_exit_2_before_anything_is_sent(tmp_path: Path) -> None:
    srv = FakeServer(seed=42, users=2, files_per_user=4, sizes=(100, 70_000))
    with srv.run_in_thread():
        cfg, key = encrypted_backup(tmp_path, srv)
        for f in restorable(srv)[:3]:
            srv.delete_file(f["id"])
        count = len(srv.files())

        res = restore(tmp_path, cfg, srv)
        assert res.exit_code == 2, res.output
        assert "encrypted" in res.output and "--identity" in res.output

        wrong = tmp_path / "other.txt"
        keygen(wrong)
        res = restore(tmp_path, cfg, srv, "--identity", str(wrong))
        assert res.exit_code == 2, res.output
        assert "none of the" in res.output and "opens with this key" in res.output

        os.chmod(key, 0o644)
        res = restore(tmp_path, cfg, srv, "--identity", str(key))
        assert res.exit_code == 2, res.output
        assert "chmod 600" in res.output and "AGE-SECRET-KEY" not in res.output
        assert len(srv.files()) == count and srv.counters.get("upload", 0) == 0

        # A dry run reads no file: it needs no key.
        os.chmod(key, 0o600)
        res = restore(tmp_path, cfg, srv, "--dry-run")
        assert res.exit_code == 0, res.output
        assert len(srv.files()) == count


def test_a_damaged_a_forged_and_a_re_keyed_file_fail_by_id_and_nothing_is_sent_for_them(tmp_path: Path) -> None:
    srv = FakeServer(seed=43, users=2, files_per_user=8, sizes=(100, 3_000, 70_000, 6 * MIB))
    with srv.run_in_thread():
        cfg, key = encrypted_backup(tmp_path, srv)
        recs = rows(tmp_path / "manifest.sqlite")
        docs = sorted(restorable(srv), key=lambda f: f["size"])
        damaged, forged, rekeyed, big = docs[-4], docs[-3], docs[-2], docs[-1]
        fine = docs[:3]
        assert big["size"] > HOLD_BYTES
        backup = tmp_path / "backup"
        # A flipped byte (age's authentication fails), a valid age file of other bytes to the same key
        # (the plaintext's sha256 differs), one encrypted to another key (no identity opens it), and a
        # big one (streamed) whose ciphertext is cut short.
        path = backup / recs[damaged["id"]]["local_path"]
        ct = bytearray(path.read_bytes())
        ct[len(ct) // 2] ^= 1
        path.write_bytes(bytes(ct))
        public = next(line.split(": ")[1] for line in key.read_text().splitlines() if "public key" in line)
        other = b"not the patient's file" * 10
        (backup / recs[forged["id"]]["local_path"]).write_bytes(
            pyrage.encrypt(other, [pyrage.x25519.Recipient.from_str(public)]))
        stranger = pyrage.x25519.Identity.generate().to_public()
        (backup / recs[rekeyed["id"]]["local_path"]).write_bytes(
            pyrage.encrypt(srv.file_bytes(rekeyed["id"]), [stranger]))
        path = backup / recs[big["id"]]["local_path"]
        path.write_bytes(path.read_bytes()[:-1000])
        bad = [damaged, forged, rekeyed, big]
        for f in bad + fine:
            srv.delete_file(f["id"])
        count = len(srv.files())

        res = restore(tmp_path, cfg, srv, "--identity", str(key))
        assert res.exit_code == 1, res.output
        assert len(srv.files()) == count + len(fine)          # only the intact ones went up
        names = {f["name"] for f in srv.files()}
        assert all(f["name"] in names for f in fine) and not any(f["name"] in names for f in bad)
        for f in bad:
            assert f"file {f['id']}" in res.output and "nothing was sent" in res.output, f["id"]
        assert f["name"] not in res.output
        assert srv.counters.get("upload", 0) == len(fine)     # not a byte of the bad ones was posted
