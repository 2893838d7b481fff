"""Encryption at rest into an S3-compatible bucket (issues 15 and 16): the age stream sits between the
download and the object sink's writer.  moto's S3 server and the built-in Files API server over loopback,
the real CLI; the bucket is read back with boto3 and the objects decrypted with pyrage."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyrage
from helpers import write_config

from syncer.crypto.identity import keygen
from syncer.fakeserver import FakeServer

MIB = 1 << 20
PREFIX = "clinic/enc"
AGE_MAGIC = b"age-encryption.org/v1\n"
# Small ones (one PUT, one pyrage call), some above the encrypting writer's 1 MiB batch (the pyrage
# thread), and two above the multipart threshold (8 MiB) so the ciphertext streams in parts.
SIZES = (0, 1, 700, 40_000, 1_500_000, 3_000, 9 * MIB, 70_000, 20 * MIB, 5_000) + (2_000, 300_000) * 10


def toml(tmp: Path, srv: FakeServer, s3, recipients: list[str], *, name: str = "syncer.toml") -> Path:
    extra = f'encrypt_to = {json.dumps(recipients)}\n' if recipients else ""
    return write_config(tmp, srv, dest=f"s3://{s3.bucket}/{PREFIX}", concurrency=4, attempts=4, min_wait=0.01,
                        max_wait=0.2, name=name,
                        extra=extra + f'[s3]\nendpoint_url = "{s3.endpoint}"\nregion = "us-east-1"\n')


def run_cli(cfg: Path, srv: FakeServer, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, VSEE_API_TOKEN=srv.api_key)
    return subprocess.run([sys.executable, "-m", "syncer", *args, "-c", str(cfg)], env=env, cwd=cfg.parent,
                          capture_output=True, text=True, timeout=300)


def rows(db: Path) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM pull_items")]
    finally:
        conn.close()


def identities(path: Path) -> list:
    return [pyrage.x25519.Identity.from_str(line) for line in path.read_text().splitlines()
            if line.startswith("AGE-SECRET-KEY-")]


def probes(srv: FakeServer) -> list[bytes]:
    """Distinctive windows of every server file: its first 64 bytes and 64 from its middle."""
    out = []
    for f in srv.files():
        data = srv.file_bytes(f["id"])
        if len(data) >= 64:
            out += [data[:64], data[len(data) // 2:len(data) // 2 + 64]]
    return out


def data_objects(s3) -> dict[str, dict]:
    return {k: o for k, o in s3.keys(PREFIX + "/").items() if "/_syncer/" not in k}


def test_encrypted_pull_into_a_bucket_two_recipients_hostile_names_rerun_and_verify(s3, tmp_path: Path) -> None:
    key1, pub1 = tmp_path / "operator.txt", keygen(tmp_path / "operator.txt")[1]
    key2, pub2 = tmp_path / "recovery.txt", keygen(tmp_path / "recovery.txt")[1]
    with FakeServer(seed=31, users=5, files_per_user=4, visits=2, files_per_visit=3, hostile_names=True,
                    sizes=SIZES).run_in_thread() as srv:
        n = len(srv.files())
        assert n >= 50
        cfg = toml(tmp_path, srv, s3, [pub1, pub2])
        res = run_cli(cfg, srv, "pull", "-q")
        assert res.returncode == 0, res.stderr[-3000:]
        recs = rows(tmp_path / "manifest.sqlite")
        objects = data_objects(s3)
        assert len(recs) == n and {r["state"] for r in recs} == {"done"}
        assert set(objects) == {f"{PREFIX}/{r['local_path']}" for r in recs}
        ids1, ids2 = identities(key1), identities(key2)
        multipart = 0
        for r in recs:
            key = f"{PREFIX}/{r['local_path']}"
            assert r["encrypted"] == 1 and key.endswith(".age")
            ct = s3.read(key)
            assert ct.startswith(AGE_MAGIC)
            want = srv.file_bytes(r["file_id"])
            # The manifest: the plaintext's size and digest, and the stored object's (the ciphertext's).
            assert (r["size"], r["sha256"]) == (len(want), hashlib.sha256(want).hexdigest())
            assert (r["stored_size"], r["stored_sha256"]) == (len(ct), hashlib.sha256(ct).hexdigest())
            assert objects[key]["Size"] == len(ct)
            assert pyrage.decrypt(ct, ids1) == want
            assert pyrage.decrypt(ct, ids2) == want
            head = s3.client.head_object(Bucket=s3.bucket, Key=key)
            assert head["Metadata"].get("file-id") == r["file_id"]
            if "-" in head["ETag"]:
                multipart += 1
            else:  # one PUT: its sha256 metadata is the ciphertext's, never the plaintext's
                assert head["Metadata"]["sha256"] == r["stored_sha256"] != r["sha256"]
        assert multipart >= 2, "no encrypted multipart upload happened: the test proved nothing"
        windows = probes(srv)
        assert len(windows) > 50
        for key in s3.keys(PREFIX + "/"):
            if "/_syncer/" in key:
                continue  # the manifest snapshot (names and digests, as a folder backup's manifest)
            body = s3.read(key)
            for w in windows:
                assert w not in body, f"plaintext of a server file found in an object ({len(body)} bytes)"
        assert not s3.uploads()

        # A rerun downloads and uploads nothing.
        s3.requests.clear()
        views = srv.counters["view"]
        res = run_cli(cfg, srv, "pull", "-q")
        assert res.returncode == 0, res.stderr[-3000:]
        assert srv.counters["view"] == views, "a rerun downloaded files again"
        assert [p for p in s3.puts() if "/_syncer/" not in p] == [], "a rerun uploaded objects again"
        assert {k: o["LastModified"] for k, o in data_objects(s3).items()} == \
            {k: o["LastModified"] for k, o in objects.items()}

        # verify (full, and --quick) without any key: the objects against the stored digests.
        for args in (["verify", "--all"], ["verify", "--all", "--quick"]):
            ok = run_cli(cfg, srv, *args, "--json")
            assert ok.returncode == 0, ok.stdout + ok.stderr
            report = json.loads(ok.stdout)
            assert report["passed"] and report["checked"] == n, report
        # --decrypt: every object decrypted (streamed from the bucket) and its plaintext checked.
        ok = run_cli(cfg, srv, "verify", "--all", "--json", "--decrypt", "--identity", str(key2))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        report = json.loads(ok.stdout)
        assert report["passed"] and report["decrypted"] == n, report
        wrong = tmp_path / "wrong.txt"
        keygen(wrong)
        res = run_cli(cfg, srv, "verify", "--all", "--decrypt", "--identity", str(wrong))
        assert res.returncode == 2 and "opens with this key" in res.stdout + res.stderr, res.stdout + res.stderr
        small = min((r for r in recs if r["size"] > 0), key=lambda r: r["size"])
        ct = bytearray(s3.read(f"{PREFIX}/{small['local_path']}"))
        ct[-1] ^= 1
        s3.client.put_object(Bucket=s3.bucket, Key=f"{PREFIX}/{small['local_path']}", Body=bytes(ct),
                             Metadata={"sha256": hashlib.sha256(ct).hexdigest()})
        for args in (["verify", "--all"], ["verify", "--all", "--quick"],
                     ["verify", "--all", "--decrypt", "--identity", str(key1)]):
            bad = run_cli(cfg, srv, *args, "--json")
            assert bad.returncode == 1, bad.stdout + bad.stderr
            assert [p["file_id"] for p in json.loads(bad.stdout)["changed"]] == [small["file_id"]]


def test_a_killed_runs_encrypted_object_is_replaced_and_encryption_turned_on_leaves_no_plain_object(
        s3, tmp_path: Path) -> None:
    key, pub = tmp_path / "k.txt", keygen(tmp_path / "k.txt")[1]
    with FakeServer(seed=32, users=2, files_per_user=4, sizes=(3_000, 50_000, 2 * MIB)).run_in_thread() as srv:
        # A plain backup first; then encryption on with --reencrypt: every object moves to <name>.age
        # (fetched again: a bucket has no local copy to convert) and the plain object is deleted.
        plain_cfg = toml(tmp_path, srv, s3, [], name="plain.toml")
        assert run_cli(plain_cfg, srv, "pull", "-q").returncode == 0
        plain_keys = set(data_objects(s3))
        assert len(plain_keys) == 8 and not any(k.endswith(".age") for k in plain_keys)
        cfg = toml(tmp_path, srv, s3, [pub])
        res = run_cli(cfg, srv, "pull", "-q", "--reencrypt")
        assert res.returncode == 0, res.stderr[-3000:]
        recs = rows(tmp_path / "manifest.sqlite")
        assert {(r["state"], r["encrypted"], r["prior_path"]) for r in recs} == {("done", 1, None)}
        keys = set(data_objects(s3))
        assert keys == {f"{PREFIX}/{r['local_path']}" for r in recs} and not keys & plain_keys
        windows = probes(srv)
        for k in keys:
            body = s3.read(k)
            assert not any(w in body for w in windows)
            rec = next(r for r in recs if f"{PREFIX}/{r['local_path']}" == k)
            assert pyrage.decrypt(body, identities(key)) == srv.file_bytes(rec["file_id"])

        # As if killed after an object's PUT but before the manifest heard of it: the object is there,
        # the row is not done.  The rerun's new ciphertext differs (age's file key is random), so only
        # the object's file-id label proves it ours: it is replaced, not refused as someone else's.
        victim = recs[0]
        conn = sqlite3.connect(tmp_path / "manifest.sqlite")
        conn.execute("UPDATE pull_items SET state='pending', sha256=NULL WHERE file_id=?", (victim["file_id"],))
        conn.commit()
        conn.close()
        res = run_cli(cfg, srv, "pull", "-q")
        assert res.returncode == 0, res.stdout + res.stderr[-3000:]
        again = {r["file_id"]: r for r in rows(tmp_path / "manifest.sqlite")}[victim["file_id"]]
        assert again["state"] == "done" and again["stored_sha256"] != victim["stored_sha256"]
        body = s3.read(f"{PREFIX}/{again['local_path']}")
        assert hashlib.sha256(body).hexdigest() == again["stored_sha256"]
        assert pyrage.decrypt(body, identities(key)) == srv.file_bytes(victim["file_id"])

        # An object of another file at a key new to this manifest is still never replaced.
        other = recs[1]
        conn = sqlite3.connect(tmp_path / "manifest.sqlite")
        conn.execute("UPDATE pull_items SET state='pending', sha256=NULL WHERE file_id=?", (other["file_id"],))
        conn.commit()
        conn.close()
        s3.client.put_object(Bucket=s3.bucket, Key=f"{PREFIX}/{other['local_path']}", Body=b"someone else's",
                             Metadata={"file-id": "another-file"})
        res = run_cli(cfg, srv, "pull", "-q")
        assert res.returncode == 1, res.stdout + res.stderr[-3000:]
        assert s3.read(f"{PREFIX}/{other['local_path']}") == b"someone else's"


# -- restore from a bucket -------------------------------------------------------------------------------

def user_docs(srv: FakeServer) -> list[tuple[str, str, str, str]]:
    return sorted((f["target_id"], f["name"], f["sha256"], f["category"]) for f in srv.files()
                  if f["target_type"] == "user")


def test_restore_from_a_bucket_plain_and_encrypted_never_touches_the_disk(s3, tmp_path: Path) -> None:
    from syncer.restore.plan import UPLOADABLE
    from syncer.restore.reader import HOLD_BYTES

    key, pub = tmp_path / "k.txt", keygen(tmp_path / "k.txt")[1]
    with FakeServer(seed=33, users=3, files_per_user=6, sizes=(100, 3_000, 70_000, 6 * MIB)).run_in_thread() as srv:
        tokens = tmp_path / "tokens.csv"
        tokens.write_text("user_id,token\n" + "".join(f"{u},{srv.token_for(u)}\n" for u in srv.users))
        os.chmod(tokens, 0o600)
        for encrypt in (False, True):
            s3.empty()
            work = tmp_path / ("enc" if encrypt else "plain")
            work.mkdir()
            cfg = toml(work, srv, s3, [pub] if encrypt else [])
            assert run_cli(cfg, srv, "pull", "-q").returncode == 0
            before = user_docs(srv)
            docs = [f for f in srv.files() if f["target_type"] == "user" and f["category"] in UPLOADABLE]
            big = [f for f in docs if f["size"] > HOLD_BYTES][:1]
            assert big, "no streamed file: the test would prove less"
            gone = [f for f in docs if f["size"] <= HOLD_BYTES][:4] + big
            for f in gone:
                srv.delete_file(f["id"])
            count = len(srv.files())
            args = ["restore", "--tokens-file", str(tokens)] + (["--identity", str(key)] if encrypt else [])
            res = run_cli(cfg, srv, *args)
            assert res.returncode == 0, res.stdout + res.stderr[-3000:]
            assert user_docs(srv) == before
            assert len(srv.files()) == count + len(gone)
            assert not [p for p in work.rglob("*") if p.is_file() and p.suffix not in (".toml", ".sqlite", ".log")
                        and not p.name.startswith("manifest.sqlite")], "something was written beside the manifest"
            res = run_cli(cfg, srv, *args)  # a rerun sends nothing
            assert res.returncode == 0 and len(srv.files()) == count + len(gone), res.stderr[-3000:]

        # An altered object fails its item by id; nothing is sent for it.
        recs = {r["file_id"]: r for r in rows(work / "manifest.sqlite")}
        victim = next(f for f in srv.files() if f["target_type"] == "user" and f["category"] in UPLOADABLE
                      and f["id"] in recs)
        okey = f"{PREFIX}/{recs[victim['id']]['local_path']}"
        ct = bytearray(s3.read(okey))
        ct[len(ct) // 2] ^= 1
        s3.client.put_object(Bucket=s3.bucket, Key=okey, Body=bytes(ct))
        srv.delete_file(victim["id"])
        count = len(srv.files())
        res = run_cli(cfg, srv, "restore", "--tokens-file", str(tokens), "--identity", str(key))
        assert res.returncode == 1, res.stdout + res.stderr[-3000:]
        assert f"file {victim['id']}" in res.stdout + res.stderr and len(srv.files()) == count


def test_a_fresh_pod_without_recipients_refuses_to_store_plain_over_an_encrypted_bucket(s3, tmp_path: Path) -> None:
    # The recipients were dropped from the config, and the new pod has no manifest yet: it fetches the
    # bucket's snapshot only inside the run.  The check against turning encryption off must still hold.
    _, pub = keygen(tmp_path / "key.txt")
    with FakeServer(seed=33, users=1, files_per_user=3, visits=0, sizes=(3_000,)).run_in_thread() as srv:
        first = tmp_path / "pod1"
        first.mkdir()
        assert run_cli(toml(first, srv, s3, [pub]), srv, "pull", "-q").returncode == 0
        before = data_objects(s3)
        assert before and all(k.endswith(".age") for k in before)
        srv.add_file("user", srv.users[0], "new scan.pdf", b"%PDF plain patient bytes " * 100, category="user_document")
        fresh = tmp_path / "pod2"
        fresh.mkdir()
        res = run_cli(toml(fresh, srv, s3, []), srv, "pull", "-q")
        assert res.returncode != 0 and "encrypted files but no recipient" in res.stderr, res.stderr[-2000:]
        after = data_objects(s3)
        assert set(after) == set(before), "nothing new stored, nothing removed"
