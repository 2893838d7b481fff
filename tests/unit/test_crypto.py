"""syncer.crypto's pieces on their own: names with room for .age, recipients and identity files, the
encryptor behind the atomic writer (big and small files, a disk error, an abandoned download)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pyrage
import pytest

from syncer.crypto import recipients as rmod
from syncer.crypto.identity import keygen, load_identities
from syncer.crypto.stream import QUEUE_BATCHES, AgeEncryptor
from syncer.errors import ConfigError, LocalIOError
from syncer.local.names import MAX_NAME_BYTES, disambiguate, safe_name
from syncer.local.writer import WRITE_BUFFER_BYTES, AtomicWriter
from syncer.models import RemoteFile, Target
from syncer.pull.plan import moved_choices, path_choices


def age_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("age-")]


# -- names -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a" * 300, "é" * 200 + ".pdf", "x" * 251 + ".tar.gz", "CON", ".env",
                                  "🙂" * 70 + ".jpeg"])
def test_encrypted_path_choices_fit_255_bytes_with_age(name: str) -> None:
    f = RemoteFile(id="id-1", name=name, size=1, category="user_document", ext="")
    for choice in path_choices(Target("user", "1"), f, encrypt=True):
        last = choice.rpartition("/")[2]
        assert last.endswith(".age") and len(last.encode()) <= MAX_NAME_BYTES
        assert last[:-4] == safe_name(last[:-4])  # the part before .age is itself a safe name
    plain = path_choices(Target("user", "1"), f)
    assert all(len(c.rpartition("/")[2].encode()) <= MAX_NAME_BYTES for c in plain)


def test_disambiguate_keeps_its_suffix_within_the_reserve() -> None:
    base = safe_name("n" * 400 + ".pdf", reserve=4)
    assert len(base.encode()) == MAX_NAME_BYTES - 4
    alt = disambiguate(base, "file-7", 4)
    assert len(alt.encode()) <= MAX_NAME_BYTES - 4 and "~" in alt and alt.endswith(".pdf")


def test_a_255_byte_plain_name_moves_to_a_name_that_fits_with_age() -> None:
    plain = "f/" + safe_name("p" * 400 + ".docx")
    assert len(plain.rpartition("/")[2].encode()) == MAX_NAME_BYTES
    for choice in moved_choices(plain, "id", encrypt=True):
        assert choice.endswith(".age") and len(choice.rpartition("/")[2].encode()) <= MAX_NAME_BYTES
    assert moved_choices("f/scan.pdf.age", "id", encrypt=False)[0] == "f/scan.pdf"


# -- recipients and identities -------------------------------------------------------------------------------

def test_recipients_file_format_and_errors(tmp_path: Path) -> None:
    a = str(pyrage.x25519.Identity.generate().to_public())
    b = str(pyrage.x25519.Identity.generate().to_public())
    f = tmp_path / "r.txt"
    f.write_text(f"# operator\n{a}\n\n   # recovery\n{b}\n")
    got = rmod.load_recipients([a], f)
    assert [str(r) for r in got] == [a, a, b]
    f.write_text("# nothing but comments\n")
    with pytest.raises(ConfigError, match="holds no recipient"):
        rmod.load_recipients([], f)
    with pytest.raises(ConfigError, match="does not exist"):
        rmod.load_recipients([], tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match=r"pull.encrypt_to\[1\]: malformed recipient 'age1zz'"):
        rmod.load_recipients([a, "age1zz"], None)
    assert rmod.load_recipients([], None) == []


def test_an_ssh_ed25519_recipient_is_accepted(tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True)
    pub = (tmp_path / "id.pub").read_text().strip()
    (r,) = rmod.load_recipients([pub], None)
    ct = pyrage.encrypt(b"hello", [r])
    ident = pyrage.ssh.Identity.from_buffer((tmp_path / "id").read_bytes())
    assert pyrage.decrypt(ct, [ident]) == b"hello"


def test_identity_file_rules(tmp_path: Path) -> None:
    path = tmp_path / "k.txt"
    _, public = keygen(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (ident,) = load_identities(path)
    assert str(ident.to_public()) == public
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_identities(path)
    os.chmod(path, 0o600)
    secret = path.read_text().splitlines()[2]
    path.write_text(path.read_text() + "AGE-SECRET-KEY-1NOTVALID\n")
    with pytest.raises(ConfigError, match=r"k.txt:4: not an age identity") as info:
        load_identities(path)
    assert secret not in str(info.value) and "NOTVALID" not in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_identities(tmp_path / "nope.txt")
    with pytest.raises(ConfigError, match="never overwrites"):
        keygen(path)


# -- the encryptor behind the writer-----------------------------------------------------------------------------

def ident_pair() -> tuple[object, object]:
    i = pyrage.x25519.Identity.generate()
    return i, i.to_public()


@pytest.mark.parametrize("size", [0, 1, 40_000, WRITE_BUFFER_BYTES - 1, WRITE_BUFFER_BYTES, 5 * WRITE_BUFFER_BYTES + 7])
async def test_writer_with_an_encryptor_stores_only_ciphertext(tmp_path: Path, size: int) -> None:
    ident, rec = ident_pair()
    data = os.urandom(size)
    sink = AgeEncryptor([rec])
    w = AtomicWriter(tmp_path / "d" / "f.age", root=tmp_path, expected_size=size, encryptor=sink)
    async with w:
        await w.open(0)
        for i in range(0, size, 65_536):
            await w.write(data[i:i + 65_536])
        nbytes, sha = await w.commit()
    assert (nbytes, sha) == (size, hashlib.sha256(data).hexdigest())
    ct = (tmp_path / "d" / "f.age").read_bytes()
    assert (w.stored_size, w.stored_sha256) == (len(ct), hashlib.sha256(ct).hexdigest())
    assert pyrage.decrypt(ct, [ident]) == data
    if size >= 64:
        assert data[:64] not in ct
    assert not age_threads()


async def test_an_abandoned_encrypted_download_leaves_nothing_and_is_never_resumed(tmp_path: Path) -> None:
    _, rec = ident_pair()
    final = tmp_path / "f.age"
    w = AtomicWriter(final, root=tmp_path, expected_size=8 * WRITE_BUFFER_BYTES, resume=True,
                     encryptor=AgeEncryptor([rec]))
    with pytest.raises(ConnectionResetError):
        async with w:
            await w.open(0)
            for _ in range(3):
                await w.write(os.urandom(WRITE_BUFFER_BYTES))
            assert age_threads()
            raise ConnectionResetError  # the transfer broke off: a plain writer would keep the partial
    assert not final.exists() and not os.listdir(tmp_path)
    assert not age_threads()
    # A stale encrypted temp is never offered for a Range resume.
    w.temp_path.write_bytes(b"age-encryption.org/v1\n" + b"\0" * 100)
    assert AtomicWriter(final, root=tmp_path, expected_size=10**6, encryptor=AgeEncryptor([rec])).existing_bytes() == 0
    assert AtomicWriter(final, root=tmp_path, expected_size=10**6).existing_bytes() > 0


async def test_a_disk_error_inside_the_encrypting_thread_is_a_local_io_error(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from syncer.crypto import stream

    _, rec = ident_pair()
    real = stream._write_all
    calls = {"n": 0}

    def full(fd: int, chunks: list[bytes]) -> None:
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, chunks)

    monkeypatch.setattr(stream, "_write_all", full)
    final = tmp_path / "f.age"
    w = AtomicWriter(final, root=tmp_path, expected_size=20 * WRITE_BUFFER_BYTES, encryptor=AgeEncryptor([rec]))
    with pytest.raises(LocalIOError, match="No space left"):
        async with w:
            await w.open(0)
            for _ in range(20):
                await w.write(os.urandom(WRITE_BUFFER_BYTES))
            await w.commit()
    assert not final.exists() and not os.listdir(tmp_path)
    assert not age_threads()


def test_the_encryptor_holds_a_bounded_amount_of_plaintext() -> None:
    sink = AgeEncryptor([ident_pair()[1]])
    assert sink._q.maxsize == QUEUE_BATCHES  # at most QUEUE_BATCHES batches (1 MiB each) waiting


# -- a real full disk ------------------------------------------------------------------------------------------

async def test_a_full_disk_under_the_encrypting_thread_is_a_local_io_error(tiny_tmpfs: Path) -> None:
    _, rec = ident_pair()
    size = 6 * WRITE_BUFFER_BYTES  # more than the 4 MiB volume holds
    w = AtomicWriter(tiny_tmpfs / "f.age", root=tiny_tmpfs, expected_size=size, encryptor=AgeEncryptor([rec]))
    with pytest.raises(LocalIOError, match="No space left"):
        async with w:
            await w.open(0)
            for _ in range(6):
                await w.write(os.urandom(WRITE_BUFFER_BYTES))
            await w.commit()
    assert not os.listdir(tiny_tmpfs)
    assert not age_threads()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A real 4 MiB tmpfs (root and mount needed; skipped otherwise)."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    vol = tmp_path / "vol"
    vol.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(vol)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield vol
    finally:
        subprocess.run(["umount", "-l", str(vol)], capture_output=True)
