"""Atomic, private local writes: AtomicWriter, folders, secrets files, the push walk."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncer.errors import LocalIOError
from syncer.local.storage import (
    LoosePermissionsError,
    UnsafePathError,
    check_private_file,
    iter_regular_files,
    make_dirs,
    open_nofollow,
    sha256_file,
    write_private_text,
)
from syncer.local.writer import WRITE_BUFFER_BYTES, AtomicWriter, ResumeError, SizeMismatchError


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o077], ids=lambda m: f"umask{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def chunks_of(data: bytes, size: int = 64 * 1024) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".syncer-part"))


# ------------------------------------------------------------------------------------- AtomicWriter


async def test_happy_path_bytes_hash_and_modes(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "dest"
    final = root / "user" / "42" / "user_document" / "a.pdf"
    data = os.urandom(WRITE_BUFFER_BYTES + 100_000)
    async with AtomicWriter(final, root=root, expected_size=len(data)) as w:
        await w.open()
        assert w.temp_path == final.with_name(".a.pdf.syncer-part")
        # open() checks and makes the folder; the temp is created by the first write to disk (so that
        # a small file can join a group commit, syncer.local.batch).
        assert mode(final.parent) == 0o700 and not w.temp_path.exists()
        for c in chunks_of(data, 70_000):
            await w.write(c)
        await w._wait_pending()  # the first MiB is on its way to disk: the temp exists now
        assert mode(w.temp_path) == 0o600
        assert not final.exists()
        result = await w.commit()
    assert result == (len(data), hashlib.sha256(data).hexdigest())
    assert final.read_bytes() == data
    assert mode(final) == 0o600
    for folder in (root, root / "user", root / "user" / "42", final.parent):
        assert mode(folder) == 0o700, folder
    assert leftovers(final.parent) == []


async def test_later_files_in_a_known_folder(tmp_path: Path, umask: int) -> None:
    folder = tmp_path / "user" / "1" / "user_document"
    async with AtomicWriter(folder / "first", root=tmp_path, expected_size=1) as w:
        await w.open()
        await w.write(b"1")
        await w.commit()
    # The folder is known now: open() leaves the temp file to the first write to disk.
    async with AtomicWriter(folder / "second", root=tmp_path, expected_size=3) as w:
        await w.open()
        await w.write(b"two")
        assert await w.commit() == (3, hashlib.sha256(b"two").hexdigest())
    assert (folder / "second").read_bytes() == b"two" and mode(folder / "second") == 0o600
    big = os.urandom(WRITE_BUFFER_BYTES + 1)
    with pytest.raises(ConnectionError):
        async with AtomicWriter(folder / "third", root=tmp_path, expected_size=None, resume=True) as w:
            await w.open()
            for c in chunks_of(big):
                await w.write(c)
            raise ConnectionError
    assert (folder / ".third.syncer-part").read_bytes() == big and mode(folder / ".third.syncer-part") == 0o600
    with pytest.raises(ConnectionError):
        async with AtomicWriter(folder / "fourth", root=tmp_path, expected_size=None, resume=True) as w:
            await w.open()
            await w.write(b"4")
            raise ConnectionError
    assert (folder / ".fourth.syncer-part").read_bytes() == b"4"
    assert not (folder / "third").exists() and not (folder / "fourth").exists()


async def test_a_folder_removed_between_files_is_made_again(tmp_path: Path) -> None:
    folder = tmp_path / "user" / "1"
    for name in ("a", "b"):
        async with AtomicWriter(folder / name, root=tmp_path, expected_size=1) as w:
            await w.open()
            await w.write(b"x")
            await w.commit()
        shutil.rmtree(tmp_path / "user")
    async with AtomicWriter(folder / "c", root=tmp_path, expected_size=1) as w:
        await w.open()
        await w.write(b"x")
        await w.commit()
    assert (folder / "c").read_bytes() == b"x" and mode(folder) == 0o700


async def test_large_file_goes_through_several_batches(tmp_path: Path) -> None:
    data = os.urandom(3 * WRITE_BUFFER_BYTES + 12_345)
    final = tmp_path / "big.bin"
    w = AtomicWriter(final, root=tmp_path, expected_size=None, chunk_fsync=True)
    await w.open()
    for c in chunks_of(data, 100_000):
        await w.write(c)
        assert not final.exists()
    assert await w.commit() == (len(data), hashlib.sha256(data).hexdigest())
    assert final.read_bytes() == data


async def test_empty_file(tmp_path: Path) -> None:
    async with AtomicWriter(tmp_path / "empty", root=tmp_path, expected_size=0) as w:
        await w.open()
        assert await w.commit() == (0, hashlib.sha256(b"").hexdigest())
    assert (tmp_path / "empty").read_bytes() == b""


async def test_commit_replaces_an_old_version_only_at_the_end(tmp_path: Path) -> None:
    final = tmp_path / "a.txt"
    final.write_bytes(b"old contents")
    data = os.urandom(2 * WRITE_BUFFER_BYTES)
    async with AtomicWriter(final, root=tmp_path, expected_size=len(data)) as w:
        await w.open()
        for c in chunks_of(data):
            await w.write(c)
            assert final.read_bytes() == b"old contents"
        await w.commit()
    assert final.read_bytes() == data


async def test_short_body_is_a_size_mismatch_and_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "a.bin"
    w = AtomicWriter(final, root=tmp_path, expected_size=10, resume=True)
    with pytest.raises(SizeMismatchError) as info:
        async with w:
            await w.open()
            await w.write(b"12345")
            await w.commit()
    assert (info.value.expected, info.value.actual) == (10, 5)
    assert isinstance(info.value, ValueError)
    assert not final.exists() and leftovers(tmp_path) == []


async def test_long_body_fails_as_soon_as_it_is_too_long(tmp_path: Path) -> None:
    final = tmp_path / "a.bin"
    w = AtomicWriter(final, root=tmp_path, expected_size=4, resume=True)
    async with w:
        await w.open()
        await w.write(b"123")
        with pytest.raises(SizeMismatchError):
            await w.write(b"45")
    assert not final.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("resume", [False, True])
async def test_exception_mid_write_leaves_no_final_file(tmp_path: Path, resume: bool) -> None:
    final = tmp_path / "a.bin"
    data = os.urandom(WRITE_BUFFER_BYTES + 5000)
    w = AtomicWriter(final, root=tmp_path, expected_size=2 * len(data), resume=resume)
    with pytest.raises(ConnectionError):
        async with w:
            await w.open()
            for c in chunks_of(data):
                await w.write(c)
            raise ConnectionError("cut mid-body")
    assert not final.exists()
    if resume:  # everything received is kept, completely, for a Range request
        assert w.temp_path.read_bytes() == data
        assert mode(w.temp_path) == 0o600
        assert AtomicWriter(final, root=tmp_path, expected_size=2 * len(data)).existing_bytes() == len(data)
    else:
        assert leftovers(tmp_path) == []


async def test_cancellation_mid_write_keeps_a_clean_partial(tmp_path: Path) -> None:
    final = tmp_path / "a.bin"
    started = asyncio.Event()
    data = os.urandom(3 * WRITE_BUFFER_BYTES)

    async def download() -> None:
        async with AtomicWriter(final, root=tmp_path, expected_size=10 * len(data), resume=True) as w:
            await w.open()
            for c in chunks_of(data):
                await w.write(c)
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(download())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not final.exists()
    assert (tmp_path / ".a.bin.syncer-part").read_bytes() == data


async def test_resume_hashes_the_existing_prefix(tmp_path: Path) -> None:
    final = tmp_path / "r.bin"
    data = os.urandom(2 * WRITE_BUFFER_BYTES + 777)
    cut = WRITE_BUFFER_BYTES + 321
    first = AtomicWriter(final, root=tmp_path, expected_size=len(data))
    await first.open()
    await first.write(data[:cut])
    await first.abort(keep_partial=True)
    assert not final.exists()

    second = AtomicWriter(final, root=tmp_path, expected_size=len(data), resume=True)
    offset = second.existing_bytes()
    assert offset == cut
    async with second:
        await second.open(offset)
        for c in chunks_of(data[offset:]):
            await second.write(c)
        assert await second.commit() == (len(data), hashlib.sha256(data).hexdigest())
    assert final.read_bytes() == data


async def test_resume_at_a_smaller_offset_truncates_the_partial(tmp_path: Path) -> None:
    final = tmp_path / "r.bin"
    (tmp_path / ".r.bin.syncer-part").write_bytes(b"abcdefXXXX")
    w = AtomicWriter(final, root=tmp_path, expected_size=9)
    await w.open(6)  # the server answered 206 from byte 6
    await w.write(b"ghi")
    assert await w.commit() == (9, hashlib.sha256(b"abcdefghi").hexdigest())
    assert final.read_bytes() == b"abcdefghi"


async def test_resume_beyond_the_partial_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".r.bin.syncer-part").write_bytes(b"abc")
    w = AtomicWriter(tmp_path / "r.bin", root=tmp_path, expected_size=9)
    with pytest.raises(ResumeError):
        await w.open(5)
    await w.open(0)  # starting over is still possible
    await w.write(b"123456789")
    await w.commit()
    assert (tmp_path / "r.bin").read_bytes() == b"123456789"


async def test_resume_without_a_partial_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ResumeError):
        await AtomicWriter(tmp_path / "r.bin", root=tmp_path, expected_size=9).open(3)


@pytest.mark.parametrize("name", ["a" * 256, "é" * 128])
async def test_a_name_too_long_for_the_file_system_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafePathError):
        await AtomicWriter(tmp_path / name, root=tmp_path, expected_size=1).open()


def test_existing_bytes(tmp_path: Path) -> None:
    w = AtomicWriter(tmp_path / "x", root=tmp_path, expected_size=10)
    assert w.existing_bytes() == 0
    w.temp_path.write_bytes(b"12345")
    assert w.existing_bytes() == 5
    w.temp_path.write_bytes(b"1234567890")  # complete or longer: nothing to resume
    assert w.existing_bytes() == 0
    w.temp_path.unlink()
    w.temp_path.symlink_to(tmp_path / "elsewhere")
    assert w.existing_bytes() == 0


async def test_a_stale_temp_link_is_never_written_through(tmp_path: Path) -> None:
    root = tmp_path / "dest"
    root.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    temp = root / ".a.bin.syncer-part"
    os.link(victim, temp)  # a hard link: O_NOFOLLOW alone would not help
    async with AtomicWriter(root / "a.bin", root=root, expected_size=3) as w:
        assert w.existing_bytes() == 0
        await w.open()
        await w.write(b"new")
        await w.commit()
    temp.symlink_to(victim)
    async with AtomicWriter(root / "a.bin", root=root, expected_size=3) as w:
        await w.open()
        await w.write(b"two")
        await w.commit()
    assert victim.read_bytes() == b"precious"
    assert (root / "a.bin").read_bytes() == b"two"


async def test_a_final_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "dest"
    root.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (root / "a.bin").symlink_to(victim)
    async with AtomicWriter(root / "a.bin", root=root, expected_size=3) as w:
        await w.open()
        await w.write(b"new")
        await w.commit()
    assert victim.read_bytes() == b"precious"
    assert not (root / "a.bin").is_symlink() and (root / "a.bin").read_bytes() == b"new"


async def test_a_path_outside_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "dest"
    w = AtomicWriter(root / ".." / "escape.bin", root=root, expected_size=1)
    with pytest.raises(UnsafePathError):
        await w.open()
    assert not (tmp_path / "escape.bin").exists()


async def test_relative_paths_are_from_the_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with AtomicWriter(Path("out/u/1/a.txt"), root=Path("out"), expected_size=2) as w:
        await w.open()
        await w.write(b"hi")
        await w.commit()
    assert (tmp_path / "out/u/1/a.txt").read_bytes() == b"hi"


async def test_a_long_final_name_gets_a_short_temp_name(tmp_path: Path) -> None:
    name = "é" * 125 + ".pdf"  # 254 bytes
    async with AtomicWriter(tmp_path / name, root=tmp_path, expected_size=1) as w:
        assert len(w.temp_path.name.encode()) <= 255 and w.temp_path.name.startswith(".")
        await w.open()
        await w.write(b"x")
        await w.commit()
    assert (tmp_path / name).read_bytes() == b"x"


async def test_disk_errors_become_local_io_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    final = tmp_path / "secret-patient-name.pdf"
    w = AtomicWriter(final, root=tmp_path, expected_size=3, resume=True)
    async with w:
        await w.open()
        await w.write(b"abc")
        monkeypatch.setattr(os, "fsync", no_space)
        with pytest.raises(LocalIOError) as info:
            await w.commit()
    assert "ENOSPC" in str(info.value) and "secret-patient-name" not in str(info.value)
    assert not final.exists() and leftovers(tmp_path) == []


async def test_writer_misuse_is_an_error(tmp_path: Path) -> None:
    w = AtomicWriter(tmp_path / "a", root=tmp_path, expected_size=None)
    with pytest.raises(RuntimeError):
        await w.write(b"x")
    await w.open()
    with pytest.raises(RuntimeError):
        await w.open()
    await w.commit()
    with pytest.raises(RuntimeError):
        await w.commit()


async def test_a_writer_never_opened_leaves_an_old_partial_alone(tmp_path: Path) -> None:
    temp = tmp_path / ".a.syncer-part"
    temp.write_bytes(b"partial")
    with pytest.raises(ConnectionError):
        async with AtomicWriter(tmp_path / "a", root=tmp_path, expected_size=None):
            raise ConnectionError("request failed before any byte")
    assert temp.read_bytes() == b"partial"


# ------------------------------------------------------------------------------------------- folders


def test_make_dirs_modes_under_any_umask(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "a" / "root"
    make_dirs(root / "x" / "y", root)
    for folder in (tmp_path / "a", root, root / "x", root / "x" / "y"):
        assert mode(folder) == 0o700
    make_dirs(root, root)  # the root itself: nothing to do


def test_make_dirs_leaves_existing_folders_alone_and_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "shared").mkdir(parents=True)
    os.chmod(root / "shared", 0o750)
    make_dirs(root / "shared" / "new", root)
    assert mode(root / "shared") == 0o750 and mode(root / "shared" / "new") == 0o700
    with pytest.raises(UnsafePathError):
        make_dirs(tmp_path / "elsewhere", root)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError):
        make_dirs(root / "link" / "out", root)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- other files


def test_check_private_file(tmp_path: Path) -> None:
    secret = tmp_path / "tokens file.json"
    secret.write_text("{}")
    os.chmod(secret, 0o600)
    check_private_file(secret)
    os.chmod(secret, 0o400)
    check_private_file(secret)
    for loose in (0o644, 0o640, 0o604, 0o660):
        os.chmod(secret, loose)
        with pytest.raises(LoosePermissionsError) as info:
            check_private_file(secret)
        assert isinstance(info.value, PermissionError)
        assert f"chmod 600 '{secret}'" in str(info.value)
    with pytest.raises(FileNotFoundError):
        check_private_file(tmp_path / "missing")


def test_write_private_text(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "metrics.prom"
    write_private_text(target, "a 1\n")
    assert target.read_text() == "a 1\n" and mode(target) == 0o600
    os.chmod(target, 0o644)
    write_private_text(target, "a 2\né\n")
    assert target.read_text(encoding="utf-8") == "a 2\né\n" and mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.prom"]


def test_write_private_text_into_a_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_private_text(tmp_path / "nope" / "m.txt", "x")


def test_sha256_file_and_open_nofollow(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    assert sha256_file(f) == (len(data), hashlib.sha256(data).hexdigest())
    assert sha256_file(f, chunk=1000) == (len(data), hashlib.sha256(data).hexdigest())
    (tmp_path / "link").symlink_to(f)
    with pytest.raises(UnsafePathError):
        sha256_file(tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafePathError):  # refused at once, not blocked waiting for a writer
        open_nofollow(tmp_path / "fifo")
    fd = open_nofollow(f)
    try:
        assert os.read(fd, 4) == data[:4]
        assert os.get_blocking(fd)
    finally:
        os.close(fd)


def test_iter_regular_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "u1" / "sub").mkdir(parents=True)
    (src / "u2").mkdir()
    (src / ".git").mkdir()
    (src / ".git" / "config").write_text("x")
    (src / "u1" / "b.pdf").write_text("b")
    (src / "u1" / "a.pdf").write_text("a")
    (src / "u1" / "sub" / "c.pdf").write_text("c")
    (src / "u1" / ".DS_Store").write_text("")
    (src / "u1" / ".a.pdf.syncer-part").write_text("")
    (src / "u2" / "z.txt").write_text("zz")
    (src / "u2" / "link.pdf").symlink_to(src / "u1" / "a.pdf")
    (src / "u2" / "dirlink").symlink_to(src / "u1")
    (src / "u2" / "dangling").symlink_to(tmp_path / "missing")
    os.mkfifo(src / "u2" / "pipe")
    skipped: list[tuple[str, str]] = []

    found = list(iter_regular_files(src, on_skip=lambda p, why: skipped.append((str(p.relative_to(src)), why))))

    assert [str(p.relative_to(src)) for p, _ in found] == ["u1/a.pdf", "u1/b.pdf", "u1/sub/c.pdf", "u2/z.txt"]
    assert found[-1][1].st_size == 2
    assert sorted(skipped) == [
        (".git", "hidden"),
        ("u1/.DS_Store", "hidden"),
        ("u1/.a.pdf.syncer-part", "hidden"),
        ("u2/dangling", "symlink"),
        ("u2/dirlink", "symlink"),
        ("u2/link.pdf", "symlink"),
        ("u2/pipe", "special"),
    ]
    assert list(iter_regular_files(src)) == found  # deterministic; no callback needed


def test_iter_regular_files_reports_unreadable_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "locked").mkdir()
    (tmp_path / "ok.txt").write_text("x")
    real_scandir = os.scandir

    def scandir(path):  # root reads every folder, so a chmod 000 would not do in CI
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    skipped: list[tuple[str, str]] = []
    found = [p.name for p, _ in iter_regular_files(tmp_path, on_skip=lambda p, why: skipped.append((p.name, why)))]
    assert found == ["ok.txt"]
    assert skipped == [("locked", "unreadable: Permission denied")]


def test_a_new_folder_is_made_durable_in_its_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorder fsyncs the folder a file lands in; the folder's own name lives in its parent, which
    make_dirs fsyncs when it adds a folder there (a crash must not lose a folder of recorded files)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    (tmp_path / "dest").mkdir()
    make_dirs(tmp_path / "dest" / "user" / "7" / "user_document", tmp_path / "dest")
    base = str(tmp_path / "dest")
    assert synced == [base, base + "/user", base + "/user/7"]
    synced.clear()
    make_dirs(tmp_path / "dest" / "user" / "7" / "user_document", tmp_path / "dest")
    assert synced == []  # nothing made, nothing to sync
