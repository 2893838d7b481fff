"""The group commit of small files (syncer.local.batch): many files, a few syscalls, the same guarantees.

Real files in a temp folder; the syscalls that make data durable are counted (or made to fail) by
wrapping them, never skipped."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest

from syncer.errors import LocalIOError
from syncer.local import batch as batch_mod
from syncer.local.batch import BatchCommitter, _kernel_reports_syncfs_errors
from syncer.local.writer import WRITE_BUFFER_BYTES, AtomicWriter


def temps(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.endswith(".syncer-part"))


async def fetch_one(committer: BatchCommitter, root: Path, rel: str, data: bytes) -> tuple[int, str]:
    """What a download does with its writer: open, write the body in pieces, commit."""
    w = AtomicWriter(root / rel, root=root, expected_size=len(data), sync_dir=False, batch=committer)
    try:
        await w.open(0)
        for i in range(0, len(data), 16_384):
            await w.write(data[i:i + 16_384])
        return await w.commit()
    finally:
        await w.abort(keep_partial=False)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count fsync(2) of files and syncfs(2) calls (they still happen)."""
    calls = {"fsync": 0, "syncfs": 0}
    real_fsync = os.fsync
    real_syncfs = batch_mod._SyncFs.__call__

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # a file's, not a new folder's (made durable in its parent)
            calls["fsync"] += 1
        real_fsync(fd)

    def syncfs(self: batch_mod._SyncFs, fd: int) -> None:
        calls["syncfs"] += 1
        real_syncfs(self, fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(batch_mod._SyncFs, "__call__", syncfs)
    return calls


@pytest.mark.parametrize("mode", ["syncfs", "fsync"])
async def test_many_small_files_are_committed_whole_private_and_grouped(
        tmp_path: Path, mode: str, counted: dict[str, int]) -> None:
    committer = BatchCommitter(mode)
    bodies = {f"user/{i % 3}/user_document/f{i}.pdf": os.urandom(1000 + 97 * i) for i in range(60)}
    results = await asyncio.gather(*(fetch_one(committer, tmp_path, rel, data) for rel, data in bodies.items()))
    await committer.close()
    for (rel, data), (nbytes, sha) in zip(bodies.items(), results, strict=True):
        path = tmp_path / rel
        assert path.read_bytes() == data
        assert (nbytes, sha) == (len(data), hashlib.sha256(data).hexdigest())
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert temps(tmp_path) == []
    assert committer.files == 60
    assert committer.batches < 60  # files that arrived together shared a batch
    if mode == "fsync" or not committer.uses_syncfs:
        assert counted["fsync"] == 60 and counted["syncfs"] == 0
    else:
        assert counted["syncfs"] == committer.batches and counted["fsync"] == 0


def test_syncfs_is_trusted_only_where_it_reports_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    class Uname:
        def __init__(self, release: str) -> None:
            self.release = release

    monkeypatch.setattr(batch_mod.sys, "platform", "linux")
    for release, trusted in [("5.7.19", False), ("5.8.0", True), ("6.1.0-28-cloud-amd64", True),
                             ("4.19.0", False), ("weird", False)]:
        monkeypatch.setattr(batch_mod.os, "uname", lambda r=release: Uname(r))
        assert _kernel_reports_syncfs_errors() is trusted, release
    monkeypatch.setattr(batch_mod.sys, "platform", "darwin")
    assert _kernel_reports_syncfs_errors() is False


async def test_a_file_that_cannot_be_renamed_fails_alone(tmp_path: Path) -> None:
    committer = BatchCommitter("syncfs")
    blocked = tmp_path / "user" / "1" / "user_document" / "b.pdf"
    blocked.mkdir(parents=True)  # a folder where the file should go: the rename must fail
    (blocked / "keep").write_bytes(b"x")
    good = {f"user/1/user_document/g{i}.pdf": os.urandom(3000) for i in range(5)}
    outcomes = await asyncio.gather(
        fetch_one(committer, tmp_path, "user/1/user_document/b.pdf", os.urandom(2000)),
        *(fetch_one(committer, tmp_path, rel, data) for rel, data in good.items()),
        return_exceptions=True)
    await committer.close()
    assert isinstance(outcomes[0], LocalIOError)
    assert all(not isinstance(o, BaseException) for o in outcomes[1:])
    for rel, data in good.items():
        assert (tmp_path / rel).read_bytes() == data
    assert (blocked / "keep").read_bytes() == b"x"
    assert temps(tmp_path) == []


@pytest.mark.parametrize("mode", ["syncfs", "fsync"])
async def test_a_failed_sync_fails_the_whole_batch_and_leaves_nothing(
        tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", broken)
    monkeypatch.setattr(batch_mod._SyncFs, "__call__", broken)
    committer = BatchCommitter(mode)
    outcomes = await asyncio.gather(
        *(fetch_one(committer, tmp_path, f"user/1/user_document/f{i}.pdf", os.urandom(500)) for i in range(8)),
        return_exceptions=True)
    await committer.close()
    assert all(isinstance(o, LocalIOError) and o.errno == errno.EIO for o in outcomes), outcomes
    # No final name holds bytes that were never made durable, and no temp is left behind.
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # noqa: ASYNC240 - a test's look


async def test_without_syncfs_in_the_kernel_each_file_is_fsynced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counted: dict[str, int]) -> None:
    committer = BatchCommitter("syncfs")
    if not committer.uses_syncfs:
        pytest.skip("no trusted syncfs here: the fsync path is the only one")

    class NoSyncfs:  # a kernel or a seccomp filter that answers ENOSYS
        def __call__(self, fd: int) -> int:
            batch_mod.ctypes.set_errno(errno.ENOSYS)
            return -1

    committer._syncfs._fn = NoSyncfs()  # type: ignore[union-attr]
    outcomes = await asyncio.gather(
        *(fetch_one(committer, tmp_path, f"user/1/user_document/f{i}.pdf", b"%d" % i) for i in range(6)))
    await committer.close()
    assert [o[0] for o in outcomes] == [len(b"%d" % i) for i in range(6)]
    assert not committer.uses_syncfs
    assert counted["fsync"] == 6


@pytest.mark.parametrize("mode", ["syncfs", "fsync"])
async def test_a_cancelled_download_leaves_no_temp_and_the_others_land(tmp_path: Path, mode: str) -> None:
    committer = BatchCommitter(mode)
    bodies = {f"user/1/user_document/f{i}.pdf": os.urandom(20_000) for i in range(30)}
    tasks = [asyncio.create_task(fetch_one(committer, tmp_path, rel, data)) for rel, data in bodies.items()]
    await asyncio.sleep(0)
    for t in tasks[::3]:
        t.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    await committer.close()
    for (rel, data), outcome in zip(bodies.items(), outcomes, strict=True):
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, asyncio.CancelledError)
        else:
            assert (tmp_path / rel).read_bytes() == data
        if (tmp_path / rel).exists():  # a cancel may come too late to stop the rename: then it is whole
            assert (tmp_path / rel).read_bytes() == data
    assert any(isinstance(o, asyncio.CancelledError) for o in outcomes), "no cancel landed: proved nothing"
    assert temps(tmp_path) == []


async def test_files_cancelled_while_queued_are_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    release = threading.Event()
    real_sync = BatchCommitter._sync

    def held_sync(self: BatchCommitter, *args: object) -> None:
        release.wait(10)  # the first batch holds the thread while the next files queue up
        real_sync(self, *args)

    monkeypatch.setattr(BatchCommitter, "_sync", held_sync)
    committer = BatchCommitter("syncfs")
    first = asyncio.create_task(fetch_one(committer, tmp_path, "user/1/user_document/first.pdf", b"1" * 100))
    while committer.files == 0 and not committer._busy:  # noqa: ASYNC110 - polls the committer's state
        await asyncio.sleep(0.001)
    queued = [asyncio.create_task(fetch_one(committer, tmp_path, f"user/1/user_document/q{i}.pdf", b"q" * 100))
              for i in range(4)]
    while len(committer._queue) < 4:  # noqa: ASYNC110 - polls the committer's state
        await asyncio.sleep(0.001)
    for t in queued[:2]:
        t.cancel()
    await asyncio.gather(*queued[:2], return_exceptions=True)  # their writers are aborted by now
    release.set()
    assert await first == (100, hashlib.sha256(b"1" * 100).hexdigest())
    await asyncio.gather(*queued[2:])
    await committer.close()
    names = sorted(p.name for p in (tmp_path / "user/1/user_document").iterdir())
    assert names == ["first.pdf", "q2.pdf", "q3.pdf"]  # no temp of a cancelled file, nor the file


async def test_big_files_and_resumed_files_do_not_take_the_batch(tmp_path: Path) -> None:
    committer = BatchCommitter("syncfs")
    big = os.urandom(WRITE_BUFFER_BYTES + 10)
    nbytes, sha = await fetch_one(committer, tmp_path, "user/1/user_document/big.bin", big)
    assert (nbytes, sha) == (len(big), hashlib.sha256(big).hexdigest())
    # A resumed download continues a temp that exists: it is committed alone, prefix hashed first.
    final = tmp_path / "user" / "1" / "user_document" / "part.bin"
    data = os.urandom(5000)
    final.with_name(".part.bin.syncer-part").write_bytes(data[:2000])
    w = AtomicWriter(final, root=tmp_path, expected_size=len(data), sync_dir=False, batch=committer)
    await w.open(2000)
    await w.write(data[2000:])
    assert await w.commit() == (len(data), hashlib.sha256(data).hexdigest())
    await committer.close()
    assert committer.files == 0
    assert final.read_bytes() == data and (tmp_path / "user/1/user_document/big.bin").read_bytes() == big


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        BatchCommitter("sometimes")


async def test_the_syncfs_descriptor_is_opened_before_the_batch_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """syncfs reports the write-back errors that happened since its descriptor was opened: opened after
    the writes, it could miss a failed early write-back of this very batch."""
    committer = BatchCommitter("syncfs")
    if not committer.uses_syncfs:
        pytest.skip("no trusted syncfs here")
    opens: list[str] = []
    real_open = os.open

    def spy(path: object, flags: int, *args: object, **kw: object) -> int:
        opens.append("folder" if flags & os.O_DIRECTORY else ("temp" if flags & os.O_CREAT else "other"))
        return real_open(path, flags, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    await asyncio.gather(*(fetch_one(committer, tmp_path, f"user/1/user_document/f{i}.pdf", b"x" * 100)
                           for i in range(5)))
    await committer.close()
    assert "folder" in opens and "temp" in opens
    assert opens.index("folder") < opens.index("temp"), opens


def test_mount_types_are_read_from_mountinfo() -> None:
    text = ("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n"
            "25 24 0:23 / /dev/shm rw,relatime shared:5 master:1 - tmpfs tmpfs rw,size=24683664k\n"
            "90 27 0:45 / /mnt/nas rw - cifs //nas/backup rw,vers=3.0\n"
            "91 27 0:46 / /mnt/ssh rw - fuse.sshfs host:/x rw\n"
            "garbage line\n")
    types = batch_mod.mount_types(text)
    assert types[os.makedev(254, 0)] == "ext4"
    assert types[os.makedev(0, 23)] == "tmpfs"  # optional fields before the separator are skipped
    assert types[os.makedev(0, 45)] == "cifs" and types[os.makedev(0, 46)] == "fuse.sshfs"
    assert {t for t in types.values() if t in batch_mod.SYNCFS_TYPES} == {"ext4", "tmpfs"}


async def test_a_file_system_whose_syncfs_is_not_trusted_gets_an_fsync_a_file(
        tmp_path: Path, counted: dict[str, int]) -> None:
    committer = BatchCommitter("syncfs")
    committer._types = {os.stat(tmp_path).st_dev: "fuse.sshfs"}  # as if the destination were sshfs
    await asyncio.gather(*(fetch_one(committer, tmp_path, f"user/1/user_document/f{i}.pdf", b"y" * 300)
                           for i in range(7)))
    await committer.close()
    assert counted["syncfs"] == 0 and counted["fsync"] == 7
    assert len(list((tmp_path / "user/1/user_document").iterdir())) == 7


async def test_a_file_abandoned_before_its_fsync_does_not_fail_the_others(tmp_path: Path) -> None:
    committer = BatchCommitter("fsync")
    writers = [AtomicWriter(tmp_path / f"u/f{i}", root=tmp_path, expected_size=10, sync_dir=False, batch=committer)
               for i in range(3)]
    for w in writers:
        await w.open(0)
    for w in writers:
        w.batch_write([b"0123456789"])
    await writers[1].abort(keep_partial=False)  # its download was cancelled between write and sync
    committer._sync(writers, {})  # no exception: the abandoned file is skipped
    for i in (0, 2):
        writers[i].batch_rename()
        assert (tmp_path / f"u/f{i}").read_bytes() == b"0123456789"
    assert not (tmp_path / "u/f1").exists() and temps(tmp_path) == []
    await committer.close()


def test_pull_durability_reaches_the_folder_sink(tmp_path: Path) -> None:
    from syncer.config import load
    from syncer.errors import ConfigError
    from syncer.store import open_sink

    if not BatchCommitter("syncfs").uses_syncfs:
        pytest.skip("no trusted syncfs here: both settings would fsync each file")
    cfg_file = tmp_path / "syncer.toml"
    cfg_file.write_text("[pull]\n", encoding="utf-8")
    assert open_sink(tmp_path / "backup", load(cfg_file, env={})).batch.uses_syncfs is True  # the default
    cfg_file.write_text('[pull]\ndurability = "fsync"\n', encoding="utf-8")
    assert open_sink(tmp_path / "backup", load(cfg_file, env={})).batch.uses_syncfs is False
    cfg_file.write_text('[pull]\ndurability = "sometimes"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="pull.durability"):
        load(cfg_file, env={})
