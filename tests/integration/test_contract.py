"""Contract tests: the same assertions against the built-in server (always) and a live account (opt-in).

The live variant is marked ``live`` (deselected by the default ``-m 'not ... live'``) and skips unless:

    SYNCER_LIVE_BASE_URL   https://<host>/<prefix>/api_v3
    SYNCER_LIVE_ACCOUNT    the account code (X-AccountCode)
    SYNCER_LIVE_TOKEN      the account API key
    SYNCER_LIVE_TARGET     TYPE:ID of a target with at least one file (for list/info/download)
    SYNCER_LIVE_WRITE=1    also upload, rename and delete one small file of our own; needs
    SYNCER_LIVE_USER_TOKEN a user's token (that user owns the test file, which is deleted at the end)

Run: ``pytest tests/integration/test_contract.py -m live``.  Read-only unless SYNCER_LIVE_WRITE=1.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from syncer.api.client import FilesClient, make_session
from syncer.api.retry import RetryPolicy
from syncer.config import ApiConfig
from syncer.errors import AuthError, NotFoundError
from syncer.fakeserver import FakeServer
from syncer.models import RemoteFile, Target

LIVE_DOWNLOAD_MAX = 20 * 2**20  # never pull a huge file from a live account in a test


@dataclass
class Account:
    kind: str                 # "fake" or "live"
    base_url: str
    account_code: str
    token: str
    target: Target | None
    user_token: str | None
    write: bool
    tick: Callable[[float], None] | None = None  # moves the fake server's clock; None for live


@pytest.fixture(params=["fake", pytest.param("live", marks=pytest.mark.live)])
async def account(request) -> AsyncIterator[Account]:
    if request.param == "fake":
        skew = [0.0]
        async with FakeServer(seed=7, users=2, files_per_user=3, visits=1, files_per_visit=2,
                              clock=lambda: time.time() + skew[0]) as srv:
            uid = srv.users[0]
            yield Account("fake", srv.base_url, srv.account_code, srv.api_key, Target("user", uid),
                          srv.token_for(uid), write=True, tick=lambda s: skew.__setitem__(0, skew[0] + s))
        return
    env = os.environ
    missing = [v for v in ("SYNCER_LIVE_BASE_URL", "SYNCER_LIVE_ACCOUNT", "SYNCER_LIVE_TOKEN") if not env.get(v)]
    if missing:
        pytest.skip(f"live contract tests need {', '.join(missing)}")
    target = Target.parse(env["SYNCER_LIVE_TARGET"]) if env.get("SYNCER_LIVE_TARGET") else None
    user_token = env.get("SYNCER_LIVE_USER_TOKEN") or None
    yield Account("live", env["SYNCER_LIVE_BASE_URL"], env["SYNCER_LIVE_ACCOUNT"], env["SYNCER_LIVE_TOKEN"],
                  target, user_token, write=env.get("SYNCER_LIVE_WRITE") == "1" and user_token is not None)


@pytest.fixture
async def api(account: Account) -> AsyncIterator[FilesClient]:
    live = account.kind == "live"
    policy = RetryPolicy(attempts=3, max_wait=10.0) if live else RetryPolicy(attempts=2, min_wait=0.0)
    async with make_session(ApiConfig(timeout_connect=10.0, timeout_read=60.0), limit=4) as session:
        yield FilesClient(session, base_url=account.base_url, token=account.token,
                          account_code=account.account_code, retry=policy)


def _need_target(account: Account) -> Target:
    if account.target is None:
        pytest.skip("set SYNCER_LIVE_TARGET=TYPE:ID for the listing tests")
    return account.target


async def _some_file(api: FilesClient, account: Account) -> RemoteFile:
    listing = await api.list_files(_need_target(account))
    small = [f for f in listing if f.size is not None and f.size <= LIVE_DOWNLOAD_MAX]
    if not small:
        pytest.skip(f"{account.target} has no file of a testable size")
    return min(small, key=lambda f: f.size or 0)


def _issued(fullpath: str) -> int | None:
    m = re.search(r"[?&]time=(\d+)", fullpath)
    return int(m[1]) if m else None


async def test_list_gives_file_objects(api, account):
    listing = await api.list_files(_need_target(account))
    assert listing.complete, listing.bad_items
    assert len(listing) > 0
    for rf in listing:
        assert isinstance(rf, RemoteFile)
        assert isinstance(rf.id, str) and rf.id
        assert isinstance(rf.name, str)
        assert rf.size is None or rf.size >= 0
        assert rf.fullpath and rf.fullpath.startswith(("https://", "http://"))


async def test_info_gives_a_fresh_fullpath(api, account):
    listed = await _some_file(api, account)
    if account.tick is not None:
        account.tick(5)  # links carry whole seconds: move the server's clock past the listing's
    info = await api.file_info(listed.id)
    assert info.id == listed.id and info.size == listed.size
    assert info.fullpath and info.fullpath.startswith(("https://", "http://"))
    before, after = _issued(listed.fullpath or ""), _issued(info.fullpath)
    if before is not None and after is not None:
        assert after >= before
    if account.tick is not None:
        assert after is not None and before is not None and after > before


async def test_download_gives_size_bytes(api, account):
    rf = await _some_file(api, account)
    info = await api.file_info(rf.id)
    async with api.download(info.fullpath) as dl:
        received = 0
        async for chunk in dl.iter_chunks(limit=rf.size):
            received += len(chunk)
    assert received == rf.size
    assert dl.status == 200 and dl.offset == 0


async def test_unknown_file_is_not_found(api, account):
    with pytest.raises(NotFoundError):
        await api.file_info(str(uuid.UUID(int=0, version=4)))


async def test_bad_token_is_an_auth_error(api, account):
    bad = FilesClient(api._session, base_url=account.base_url, token="syncer-contract-test-invalid-token",
                      account_code=account.account_code, retry=RetryPolicy(attempts=1))
    with pytest.raises(AuthError):
        if account.target is not None:
            await bad.list_files(account.target)
        else:
            await bad.file_info(str(uuid.UUID(int=0, version=4)))


async def test_upload_rename_delete(api, account, tmp_path: Path):
    if not account.write:
        pytest.skip("set SYNCER_LIVE_WRITE=1 and SYNCER_LIVE_USER_TOKEN to test writes")
    assert account.user_token
    data = b"syncer contract test " + uuid.uuid4().bytes
    path = tmp_path / "syncer-contract-test.txt"
    path.write_bytes(data)
    up = await api.upload(path, token=account.user_token, category="user_document")
    try:
        assert isinstance(up.id, str) and up.id
        assert up.name == path.name and up.size == len(data) and up.category == "user_document"
        owner = Target("user", up.meta_target_id or up.owner_id or "")
        assert up.id in {f.id for f in await api.list_files(owner)}
        renamed = await api.rename(up.id, "syncer-contract-test-renamed.txt")
        assert renamed.id == up.id and renamed.name == "syncer-contract-test-renamed.txt"
        info = await api.file_info(up.id)
        assert info.name == "syncer-contract-test-renamed.txt"
        async with api.download(info.fullpath) as dl:
            assert await dl.read(limit=len(data)) == data
    finally:
        deleted = await api.delete(up.id)  # clean up even when an assertion above failed
    assert deleted is True
    with pytest.raises(NotFoundError):
        await api.file_info(up.id)
