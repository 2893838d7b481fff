"""Encryption at rest (issue 15): pull with age recipients, verify with and without the key, keygen,
bad input, crashes.  Everything against the built-in server over loopback and the real CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyrage
import pytest
from helpers import cli, spawn_syncer, write_config

from syncer.crypto.identity import keygen
from syncer.crypto.stream import DecryptFailed, NoMatchingKey, decrypt_sha256, open_plaintext
from syncer.fakeserver import FakeServer
from syncer.local.names import MAX_NAME_BYTES

AGE_MAGIC = b"age-encryption.org/v1\n"


def make_key(folder: Path, name: str) -> tuple[Path, str]:
    path = folder / name
    _, public = keygen(path)
    return path, public


def enc_config(tmp_path: Path, srv: FakeServer, recipients: list[str], **kw) -> Path:
    extra = f"encrypt_to = {json.dumps(recipients)}\n" if recipients else ""
    return write_config(tmp_path, srv, extra=extra, **kw)


def rows(tmp_path: Path) -> list[dict]:
    conn = sqlite3.connect(tmp_path / "manifest.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM pull_items")]
    finally:
        conn.close()


def identities(path: Path) -> list:
    return [pyrage.x25519.Identity.from_str(line) for line in path.read_text().splitlines()
            if line.startswith("AGE-SECRET-KEY-")]


def all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def assert_no_plaintext(root: Path, secrets: list[bytes]) -> int:
    """No server file's bytes (a 64-byte window from each) appear in any file under ``root``."""
    seen = 0
    for p in all_files(root):
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            continue  # a temp renamed meanwhile
        seen += 1
        for s in secrets:
            assert s not in data, f"plaintext of a server file found in {p.name!r}"
    return seen


def probes(srv: FakeServer) -> list[bytes]:
    """Distinctive windows of every server file: its first 64 bytes and 64 from its middle."""
    out = []
    for f in srv.files():
        data = srv.file_bytes(f["id"])
        if len(data) >= 64:
            out += [data[:64], data[len(data) // 2:len(data) // 2 + 64]]
    return out


def test_two_recipients_hostile_names_every_file_is_age_and_decrypts_with_either_key(tmp_path: Path) -> None:
    key1, pub1 = make_key(tmp_path, "operator.txt")
    key2, pub2 = make_key(tmp_path, "recovery.txt")
    srv = FakeServer(seed=15, users=10, files_per_user=16, visits=8, files_per_visit=5, hostile_names=True,
                     sizes=(0, 1, 700, 40_000, 300_000, 1_500_000))
    with srv.run_in_thread():
        n = len(srv.files())
        assert n >= 200
        cfg = enc_config(tmp_path, srv, [pub1, pub2])
        res = cli(["pull", "-q", "-c", str(cfg)], token=srv.api_key)
        assert res.exit_code == 0, res.output
        backup = tmp_path / "backup"
        recs = rows(tmp_path)
        assert len(recs) == n and {r["state"] for r in recs} == {"done"}
        age_cli = shutil.which("age") or shutil.which("rage")
        ids1, ids2 = identities(key1), identities(key2)
        for r in recs:
            path = backup / r["local_path"]
            assert r["encrypted"] == 1 and path.name.endswith(".age")
            assert len(path.name.encode()) <= MAX_NAME_BYTES
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            ct = path.read_bytes()
            assert ct.startswith(AGE_MAGIC)
            assert (len(ct), hashlib.sha256(ct).hexdigest()) == (r["stored_size"], r["stored_sha256"])
            want = srv.file_bytes(r["file_id"])
            assert (r["size"], r["sha256"]) == (len(want), hashlib.sha256(want).hexdigest())
            assert pyrage.decrypt(ct, ids1) == want
            assert pyrage.decrypt(ct, ids2) == want
            assert b"".join(open_plaintext(path, ids2)) == want
        if age_cli:
            # The way out without syncer: the reference CLI reads what we wrote (a sample of names).
            for r in recs[::7]:
                for key in (key1, key2):
                    out = subprocess.run([age_cli, "-d", "-i", str(key), str(backup / r["local_path"])],
                                         capture_output=True, check=True).stdout
                    assert out == srv.file_bytes(r["file_id"])
        assert_no_plaintext(tmp_path / "backup", probes(srv))
        assert not [p for p in backup.rglob(".*")], "temp files left behind"
        # A rerun changes nothing; status counts the files stored encrypted.
        before = {r["file_id"]: r["stored_sha256"] for r in recs}
        res = cli(["pull", "-q", "-c", str(cfg)], token=srv.api_key)
        assert res.exit_code == 0, res.output
        assert {r["file_id"]: r["stored_sha256"] for r in rows(tmp_path)} == before
        res = cli(["status", "--json", "-c", str(cfg)])
        assert json.loads(res.output)["pull"]["stored"] == {"plain": 0, "encrypted": n}
    if not age_cli:
        pytest.skip("interoperability with the age CLI not checked: neither age nor rage is installed "
                    "(apt-get install age); pyrage checks passed")


def test_age_cli_interop_or_skip(tmp_path: Path) -> None:
    """age/rage decrypt our files and our keygen file; skipped with a note when neither is installed."""
    age_cli = shutil.which("age") or shutil.which("rage")
    if not age_cli:
        pytest.skip("neither age nor rage is installed: apt-get install age")
    key, pub = make_key(tmp_path, "k.txt")
    srv = FakeServer(seed=3, users=1, files_per_user=3, sizes=(5, 70_000, 2_000_000))
    with srv.run_in_thread():
        cfg = enc_config(tmp_path, srv, [pub])
        assert cli(["pull", "-q", "-c", str(cfg)], token=srv.api_key).exit_code == 0
        for r in rows(tmp_path):
            out = subprocess.run([age_cli, "-d", "-i", str(key), str(tmp_path / "backup" / r["local_path"])],
                                 capture_output=True, check=True).stdout
            assert out == srv.file_bytes(r["file_id"])


class SlowServer(FakeServer):
    """The built-in server, its file bodies sent 16 KiB at a time with a pause: downloads stay in flight."""

    pause = 0.02

    async def _send_file(self, request, rec, start, length, status, headers, cut, extra=b""):  # noqa: ANN001
        from aiohttp import web

        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = length
        await resp.prepare(request)
        data = self.file_bytes(rec.id)[start:start + length]
        try:
            for i in range(0, len(data), 16_384):
                await resp.write(data[i:i + 16_384])
                await asyncio.sleep(self.pause)
        except ConnectionError:
            pass
        return resp


def test_no_plaintext_on_disk_while_slow_downloads_are_in_flight(tmp_path: Path) -> None:
    _, pub = make_key(tmp_path, "k.txt")
    srv = SlowServer(seed=4, users=1, files_per_user=3, hostile_names=True, sizes=(600_000, 1_300_000))
    with srv.run_in_thread():
        secrets = probes(srv)
        cfg = enc_config(tmp_path, srv, [pub], concurrency=8)
        proc = spawn_syncer(cfg, srv, "pull", "-q")
        scans = temps_seen = 0
        try:
            while proc.poll() is None:
                backup = tmp_path / "backup"
                if backup.exists():
                    temps = [p for p in backup.rglob(".*.syncer-part")]
                    temps_seen += bool(temps)
                    assert_no_plaintext(backup, secrets)
                    scans += 1
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert temps_seen >= 3, "no download was caught in flight: the test proved nothing"
        assert_no_plaintext(tmp_path / "backup", secrets)
        for r in rows(tmp_path):
            assert b"".join(open_plaintext(tmp_path / "backup" / r["local_path"], identities(tmp_path / "k.txt"))) \
                == srv.file_bytes(r["file_id"])


@pytest.mark.slow
def test_sigkill_during_encrypted_downloads_then_rerun(tmp_path: Path) -> None:
    key, pub = make_key(tmp_path, "k.txt")
    srv = SlowServer(seed=5, users=3, files_per_user=6, hostile_names=True, sizes=(20_000, 1_200_000, 2_500_000))
    with srv.run_in_thread():
        cfg = enc_config(tmp_path, srv, [pub], concurrency=4, timeout_read=5.0)
        kills = 0
        for delay in (0.6, 1.2, 1.8):
            proc = spawn_syncer(cfg, srv, "pull", "-q")
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=30)
            for p in all_files(tmp_path / "backup"):
                if p.name.startswith("."):
                    continue  # a hidden temp: never a final file
                # Every visible file is complete: it decrypts (authenticated to the end).
                decrypt_sha256(p, identities(key))
        assert kills >= 2
        proc = spawn_syncer(cfg, srv, "pull", "-q")
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        recs = rows(tmp_path)
        assert len(recs) == len(srv.files()) and {r["state"] for r in recs} == {"done"}
        for r in recs:
            ct = (tmp_path / "backup" / r["local_path"]).read_bytes()
            assert pyrage.decrypt(ct, identities(key)) == srv.file_bytes(r["file_id"])
        assert not [p for p in (tmp_path / "backup").rglob(".*")], "temp files left behind"


def _pulled(tmp_path: Path, sizes=(100, 70_000, 200_000)) -> tuple[FakeServer, Path, Path, str]:
    key, pub = make_key(tmp_path, "k.txt")
    srv = FakeServer(seed=6, users=2, files_per_user=3, sizes=sizes)
    with srv.run_in_thread():
        cfg = enc_config(tmp_path, srv, [pub])
        res = cli(["pull", "-q", "-c", str(cfg)], token=srv.api_key)
        assert res.exit_code == 0, res.output
    return srv, cfg, key, pub


def test_verify_without_the_key_catches_a_flipped_byte_and_a_truncation(tmp_path: Path) -> None:
    srv, cfg, key, _ = _pulled(tmp_path)
    res = cli(["verify", "--all", "-c", str(cfg)])
    assert res.exit_code == 0, res.output
    recs = sorted(rows(tmp_path), key=lambda r: r["local_path"])
    flipped, cut = tmp_path / "backup" / recs[0]["local_path"], tmp_path / "backup" / recs[1]["local_path"]
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    cut.write_bytes(cut.read_bytes()[:-16])
    res = cli(["verify", "--all", "--json", "-c", str(cfg)])
    assert res.exit_code == 1
    report = json.loads(res.output)
    changed = {p["local_path"]: p["detail"] for p in report["changed"]}
    assert set(changed) == {recs[0]["local_path"], recs[1]["local_path"]}
    assert "SHA-256" in changed[recs[0]["local_path"]] and "size" in changed[recs[1]["local_path"]]
    # With the key the same two fail age's authentication.
    res = cli(["verify", "--all", "--json", "--decrypt", "--identity", str(key), "-c", str(cfg)])
    assert res.exit_code == 1
    assert {p["local_path"] for p in json.loads(res.output)["changed"]} == set(changed)


def test_verify_decrypt_catches_a_re_encrypted_file_of_other_bytes_same_size(tmp_path: Path) -> None:
    srv, cfg, key, pub = _pulled(tmp_path)
    target = sorted(rows(tmp_path), key=lambda r: r["size"])[0]  # small: cheap to re-encrypt many times
    path = tmp_path / "backup" / target["local_path"]
    other = bytearray(srv.file_bytes(target["file_id"]))
    other[0] ^= 0xFF
    # age adds a random "grease" stanza to the header (about 160 sizes seen): encrypt until the size matches.
    for _ in range(20_000):
        forged = pyrage.encrypt(bytes(other), [pyrage.x25519.Recipient.from_str(pub)])
        if len(forged) == path.stat().st_size:
            break
    assert len(forged) == path.stat().st_size  # same size: only the content tells
    path.write_bytes(forged)
    res = cli(["verify", "--all", "--json", "--decrypt", "--identity", str(key), "-c", str(cfg)])
    assert res.exit_code == 1, res.output
    report = json.loads(res.output)
    assert [p["local_path"] for p in report["changed"]] == [target["local_path"]]
    assert "decrypted content differs" in report["changed"][0]["detail"]
    assert report["decrypted"] == len(rows(tmp_path))


def test_verify_decrypt_with_the_wrong_identity_is_a_clear_exit_2(tmp_path: Path) -> None:
    _, cfg, _, _ = _pulled(tmp_path)
    wrong, _ = make_key(tmp_path, "other.txt")
    res = cli(["verify", "--all", "--decrypt", "--identity", str(wrong), "-c", str(cfg)])
    assert res.exit_code == 2
    assert "none of the" in res.output and "opens with this key" in res.output


def test_identity_file_with_loose_permissions_is_refused(tmp_path: Path) -> None:
    _, cfg, key, _ = _pulled(tmp_path)
    os.chmod(key, 0o644)
    res = cli(["verify", "--decrypt", "--identity", str(key), "-c", str(cfg)])
    assert res.exit_code == 2
    assert "chmod 600" in res.output and "AGE-SECRET-KEY" not in res.output
    res = cli(["verify", "--decrypt", "-c", str(cfg)])
    assert res.exit_code == 2 and "--identity" in res.output


def test_malformed_recipient_is_exit_2_naming_it(tmp_path: Path) -> None:
    srv = FakeServer(seed=1, users=1, files_per_user=1)
    with srv.run_in_thread():
        cfg = enc_config(tmp_path, srv, ["age1notarealkey"])
        res = cli(["pull", "-q", "-c", str(cfg)], token=srv.api_key)
        assert res.exit_code == 2
        assert "pull.encrypt_to[0]" in res.output and "malformed recipient" in res.output
        (tmp_path / "recipients.txt").write_text("# clinic keys\n\nage1bogus\n")
        cfg = write_config(tmp_path, srv, extra='encrypt_to_file = "recipients.txt"\n')
        res = cli(["pull", "-q", "-c", str(cfg)], token=srv.api_key)
        assert res.exit_code == 2 and "recipients.txt:3" in res.output
        secret = str(pyrage.x25519.Identity.generate())
        cfg = enc_config(tmp_path, srv, [secret])
        res = cli(["pull", "-q", "-c", str(cfg)], token=srv.api_key)
        assert res.exit_code == 2 and "private key" in res.output and secret not in res.output
        assert not (tmp_path / "backup").exists() or not all_files(tmp_path / "backup")


def test_recipients_file_with_comments_works(tmp_path: Path) -> None:
    key, pub = make_key(tmp_path, "k.txt")
    srv = FakeServer(seed=2, users=1, files_per_user=2)
    with srv.run_in_thread():
        (tmp_path / "recipients.txt").write_text(f"# operator\n{pub}\n\n")
        cfg = write_config(tmp_path, srv, extra='encrypt_to_file = "recipients.txt"\n')
        assert cli(["pull", "-q", "-c", str(cfg)], token=srv.api_key).exit_code == 0
        for r in rows(tmp_path):
            assert pyrage.decrypt((tmp_path / "backup" / r["local_path"]).read_bytes(), identities(key)) \
                == srv.file_bytes(r["file_id"])


def test_keygen_writes_a_private_age_identity_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "key.txt"
    res = cli(["keygen", "-o", str(out)])
    assert res.exit_code == 0
    public = res.output.strip()
    assert public.startswith("age1")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# created: ") and lines[1] == f"# public key: {public}"
    assert lines[2].startswith("AGE-SECRET-KEY-1")
    assert str(pyrage.x25519.Identity.from_str(lines[2]).to_public()) == public
    before = out.read_bytes()
    res = cli(["keygen", "-o", str(out)])
    assert res.exit_code == 2 and "never overwrites" in res.output
    assert out.read_bytes() == before


def test_a_255_byte_name_plus_age_fits(tmp_path: Path) -> None:
    _, pub = make_key(tmp_path, "k.txt")
    srv = FakeServer(seed=7)
    user = srv.add_user()
    long_name = "é" * 240 + ".pdf"  # 484 bytes: cut to fit, with room kept for .age
    srv.add_file("user", user, name=long_name, data=b"x" * 1000, category="user_document")
    with srv.run_in_thread():
        cfg = enc_config(tmp_path, srv, [pub])
        res = cli(["pull", "-q", "-c", str(cfg)], token=srv.api_key)
        assert res.exit_code == 0, res.output
        (r,) = rows(tmp_path)
        name = Path(r["local_path"]).name
        assert name.endswith(".pdf.age") and len(name.encode()) <= MAX_NAME_BYTES
        assert len(name.encode()) >= MAX_NAME_BYTES - 8  # cut only as much as needed


def test_turning_encryption_on_then_reencrypt_then_off(tmp_path: Path) -> None:
    key, pub = make_key(tmp_path, "k.txt")
    srv = FakeServer(seed=8, users=2, files_per_user=3, sizes=(300, 90_000))
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv)
        assert cli(["pull", "-q", "-c", str(cfg)], token=srv.api_key).exit_code == 0
        plain = {r["file_id"]: r["local_path"] for r in rows(tmp_path)}
        assert all(not p.endswith(".age") for p in plain.values())
        # On: a new file is encrypted, the plain ones stay.
        new_id = srv.add_file("user", srv.users[0], name="new.pdf", data=b"fresh" * 100,
                              category="user_document")["id"]
        cfg = enc_config(tmp_path, srv, [pub])
        assert cli(["pull", "-q", "-c", str(cfg)], token=srv.api_key).exit_code == 0
        recs = {r["file_id"]: r for r in rows(tmp_path)}
        assert recs[new_id]["encrypted"] == 1 and recs[new_id]["local_path"].endswith(".age")
        assert all(recs[f]["encrypted"] == 0 and (tmp_path / "backup" / p).exists() for f, p in plain.items())
        st = json.loads(cli(["status", "--json", "-c", str(cfg)]).output)["pull"]["stored"]
        assert st == {"plain": len(plain), "encrypted": 1}
        # --reencrypt: each plain file becomes <name>.age, and the plain one is gone.
        res = cli(["pull", "-q", "--reencrypt", "-c", str(cfg)], token=srv.api_key)
        assert res.exit_code == 0, res.output
        recs = {r["file_id"]: r for r in rows(tmp_path)}
        for f, p in plain.items():
            r = recs[f]
            assert r["state"] == "done" and r["encrypted"] == 1 and r["local_path"] == p + ".age"
            assert r["prior_path"] is None and not (tmp_path / "backup" / p).exists()
            assert pyrage.decrypt((tmp_path / "backup" / r["local_path"]).read_bytes(), identities(key)) \
                == srv.file_bytes(f)
        assert_no_plaintext(tmp_path / "backup", probes(srv))
        assert cli(["verify", "--all", "-c", str(cfg)]).exit_code == 0
        assert cli(["verify", "--all", "--decrypt", "--identity", str(key), "-c", str(cfg)]).exit_code == 0
        # Off again: refused without --allow-plain.
        cfg = write_config(tmp_path, srv)
        res = cli(["pull", "-q", "-c", str(cfg)], token=srv.api_key)
        assert res.exit_code == 2 and "--allow-plain" in res.output
        later = srv.add_file("user", srv.users[1], name="later.pdf", data=b"plain again" * 50,
                             category="user_document")["id"]
        res = cli(["pull", "-q", "--allow-plain", "-c", str(cfg)], token=srv.api_key)
        assert res.exit_code == 0, res.output
        recs = {r["file_id"]: r for r in rows(tmp_path)}
        assert recs[later]["encrypted"] == 0 and not recs[later]["local_path"].endswith(".age")
        assert (tmp_path / "backup" / recs[later]["local_path"]).read_bytes() == srv.file_bytes(later)
        assert sum(r["encrypted"] for r in recs.values()) == len(plain) + 1  # the encrypted ones stay
        st = json.loads(cli(["status", "--json", "-c", str(cfg)]).output)["pull"]["stored"]
        assert st == {"plain": 1, "encrypted": len(plain) + 1}
        assert cli(["verify", "--all", "-c", str(cfg)]).exit_code == 0


def test_open_plaintext_raises_on_damage_and_wrong_key(tmp_path: Path) -> None:
    ident = pyrage.x25519.Identity.generate()
    other = pyrage.x25519.Identity.generate()
    data = os.urandom(300_000)
    path = tmp_path / "f.age"
    path.write_bytes(pyrage.encrypt(data, [ident.to_public()]))
    assert decrypt_sha256(path, [ident]) == (len(data), hashlib.sha256(data).hexdigest())
    with pytest.raises(NoMatchingKey):
        decrypt_sha256(path, [other])
    ct = path.read_bytes()
    path.write_bytes(ct[:-1])
    with pytest.raises(DecryptFailed):
        decrypt_sha256(path, [ident])
    # Stopping early stops the thread.
    path.write_bytes(ct)
    gen = open_plaintext(path, [ident])
    next(gen)
    gen.close()
    assert not [t for t in threading.enumerate() if t.name == "age-decrypt"]


def test_a_plain_pull_never_imports_pyrage(tmp_path: Path) -> None:
    srv = FakeServer(seed=9, users=1, files_per_user=2)
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv)
        code = ("import sys; from click.testing import CliRunner; from syncer.cli import main; "
                f"r = CliRunner().invoke(main, ['pull', '-q', '-c', {str(cfg)!r}]); "
                "print(r.exit_code, 'pyrage' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, VSEE_API_TOKEN=srv.api_key), cwd=tmp_path)
        assert out.stdout.split() == ["0", "False"], out.stdout + out.stderr
