"""FilesClient against the built-in server over loopback; aioresponses only for payloads the server
will not produce (odd JSON, HTML 404s, lost DELETE answers, foreign exceptions with signed URLs)."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
import traceback
from pathlib import Path

import aiohttp
import pytest
from aioresponses import aioresponses

from syncer.api.client import API_CONNECTIONS, Download, FilesClient, Listing, RedactedCause, make_session
from syncer.api.retry import RetryPolicy
from syncer.config import ApiConfig
from syncer.errors import (
    ApiError,
    AuthError,
    BadRequestError,
    ConnectionFailed,
    ForbiddenError,
    LinkExpiredError,
    NotFoundError,
    PermanentError,
    ProtocolError,
    RateLimitedError,
    ServerError,
    TimeoutError_,
    TooLargeError,
    TransientError,
    TruncatedBody,
    UploadOutcomeUnknown,
    is_retryable,
)
from syncer.fakeserver import FakeServer
from syncer.models import RemoteFile, Target

MOCK_BASE = "https://api.example/clinic/api_v3"
MOCK_TOKEN = "mocktoken-0123456789abcdef"
LIST_RE = re.compile(r"^https://api\.example/clinic/api_v3/files\?.*$")


def user(srv: FakeServer, i: int = 0) -> Target:
    return Target("user", srv.users[i])


async def first_file(client: FilesClient, srv: FakeServer, i: int = 0) -> RemoteFile:
    listing = await client.list_files(user(srv, i))
    return listing.files[0]


async def fetch(client: FilesClient, url: str, *, offset: int = 0, limit: int | None = None) -> tuple[Download, bytes]:
    async with client.download(url, offset=offset) as dl:
        return dl, await dl.read(limit=limit)


@pytest.fixture
def mock_client(http_session, retry_policy) -> FilesClient:
    return FilesClient(http_session, base_url=MOCK_BASE + "/", token=MOCK_TOKEN, account_code="acme",
                       retry=retry_policy)


@pytest.fixture
def upload_file(tmp_path: Path) -> Path:
    path = tmp_path / "scan.pdf"
    path.write_bytes(b"%PDF-1.4 " + bytes(range(256)) * 40)
    return path


# -- session ---------------------------------------------------------------------------------------

async def test_make_session_settings():
    api = ApiConfig(timeout_connect=3.0, timeout_read=7.0)
    async with make_session(api, limit=5) as session:
        assert session.timeout.total is None
        assert session.timeout.sock_connect == 3.0 and session.timeout.sock_read == 7.0
        assert session.connector.limit == 5 and session.connector.limit_per_host == 5
        assert session.connector._ssl is True  # verified with the default trust store, never ssl=False


async def test_metadata_calls_have_a_pool_of_their_own(server):
    """Every transfer connection held by a download that is not read yet: a listing and a fresh link
    still answer, through the API pool; on one shared pool the same listing waits for the download."""
    api = ApiConfig(timeout_connect=5.0, timeout_read=10.0)
    async with make_session(api, limit=1) as transfers, make_session(api, limit=API_CONNECTIONS) as meta:
        split = FilesClient(transfers, base_url=server.base_url, token=server.api_key, api_session=meta)
        shared = FilesClient(transfers, base_url=server.base_url, token=server.api_key)
        # Big enough that its body cannot sit whole in buffers (then its connection would be free).
        big_id = server.add_file("user", server.users[0], "big.bin", size=16 << 20)["id"]
        first = next(f for f in await split.list_files(user(server)) if f.id == big_id)
        async with split.download(first.fullpath) as dl:  # holds the only transfer connection
            listing = await asyncio.wait_for(split.list_files(user(server)), 5)
            info = await asyncio.wait_for(split.file_info(first.id), 5)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(shared.list_files(user(server)), 0.5)
            body = await dl.read()
    expected = {f["id"] for f in server.files() if f["target_type"] == "user" and f["target_id"] == server.users[0]}
    assert {f.id for f in listing} == expected
    assert info.id == first.id and info.fullpath
    assert body == server.file_bytes(first.id)


_CA_BUNDLE = ssl.get_default_verify_paths().cafile


@pytest.mark.skipif(not _CA_BUNDLE or not Path(_CA_BUNDLE).is_file(), reason="no CA bundle file here")
async def test_make_session_with_a_ca_bundle():
    async with make_session(ApiConfig(ca_bundle=Path(_CA_BUNDLE)), limit=2) as session:
        ctx = session.connector._ssl
        assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED


# -- list ------------------------------------------------------------------------------------------

async def test_list_user_and_visit(client, server):
    listing = await client.list_files(user(server))
    assert isinstance(listing, Listing) and listing.complete and not listing.target_missing
    assert len(listing) == 4
    for rf in listing:
        assert isinstance(rf, RemoteFile) and isinstance(rf.id, str) and rf.fullpath
        assert rf.meta_target_id == server.users[0]
    expected = {r["id"] for r in server.files() if r["target_type"] == "user" and r["target_id"] == server.users[0]}
    assert {rf.id for rf in listing} == expected

    visit = await client.list_files(Target("visit", server.visits[0]))
    assert len(visit) == 2 and all(rf.category == "intake_attachment" for rf in visit)
    assert visit[0].meta_target_type == "intake"  # filed under the asked-for target by the caller


async def test_list_category_filter_and_include_shared(client, server):
    docs = await client.list_files(user(server), category="user_document")
    assert docs.files and all(rf.category == "user_document" for rf in docs)
    # the seed shares one of users[0]'s documents with users[1]
    plain = await client.list_files(user(server, 1))
    shared = await client.list_files(user(server, 1), include_shared=True)
    assert len(shared) == len(plain) + 1
    assert {rf.id for rf in plain} < {rf.id for rf in shared}


async def test_list_unknown_target_is_empty(client, server):
    listing = await client.list_files(Target("user", "999"))
    assert list(listing) == [] and listing.complete


async def test_list_404_is_no_files(mock_client):
    with aioresponses() as m:
        m.get(LIST_RE, status=404, payload={"error": {"code": 404, "message": "no such target"}})
        listing = await mock_client.list_files(Target("visit", "42"))
    assert listing.files == [] and listing.target_missing


async def test_list_sends_headers_and_query(mock_client):
    with aioresponses() as m:
        m.get(LIST_RE, payload={"data": []})
        await mock_client.list_files(Target("user", "7"), category="user_document", include_shared=True)
        ((_, url), calls), = m.requests.items()
    assert url.query == {"target_id": "7", "target_type": "user", "category": "user_document",
                         "include_shared": "1"}
    headers = calls[0].kwargs["headers"]
    assert headers["X-ApiToken"] == MOCK_TOKEN and headers["X-AccountCode"] == "acme"
    assert calls[0].kwargs["allow_redirects"] is False


async def test_list_parses_leniently_and_reports_bad_items(mock_client):
    items = [
        {"id": 350936, "name": "a.pdf", "size": "12", "fullpath": "https://x/files/view/1?auth_code=a&time=1",
         "meta": {"target": {"id": 77, "type": "user"}}, "creator": {"id": 77}, "brand_new_field": {"x": 1}},
        {"id": "only-an-id"},
        {"name": "no id here.pdf", "size": 3},
        "not an object",
        {"id": "neg", "size": -1},
        {"id": "350936", "name": "duplicate of the first"},
    ]
    with aioresponses() as m:
        m.get(LIST_RE, payload={"data": items, "paging": None})
        listing = await mock_client.list_files(Target("user", "77"))
    ids = [rf.id for rf in listing]
    assert ids == ["350936", "only-an-id"]
    first, bare = listing.files
    assert first.size == 12 and first.meta_target_id == "77" and first.owner_id == "77"
    assert first.extra == {"brand_new_field": {"x": 1}}
    assert bare.name == "" and bare.size is None and bare.fullpath is None and bare.category is None
    assert not listing.complete and len(listing.bad_items) == 3
    assert listing.bad_items[0].startswith("item 2:") and "'id'" in listing.bad_items[0]
    assert listing.bad_items[1].startswith("item 3:")
    assert "negative" in listing.bad_items[2]


@pytest.mark.parametrize("payload", [{"data": {"id": "x"}}, {"data": None}, {"result": []}])
async def test_list_with_data_not_a_list_is_a_protocol_error(mock_client, payload):
    with aioresponses() as m:
        m.get(LIST_RE, payload=payload)
        with pytest.raises(ProtocolError):
            await mock_client.list_files(Target("user", "1"))


# -- info ------------------------------------------------------------------------------------------

async def test_info_gives_a_fresh_fullpath(client, server):
    now = [time.time()]
    async with FakeServer(seed=2, users=1, files_per_user=1, clock=lambda: now[0]) as srv:
        c = FilesClient(client._session, base_url=srv.base_url, token=srv.api_key, retry=client.retry)
        listed = await first_file(c, srv)
        now[0] += 120
        info = await c.file_info(listed.id)
    assert info.id == listed.id and info.size == listed.size and info.name == listed.name
    assert info.fullpath and info.fullpath != listed.fullpath
    assert int(re.search(r"[?&]time=(\d+)", info.fullpath)[1]) >= int(now[0]) - 1


async def test_info_404_is_not_found_and_not_retried(client, server):
    with pytest.raises(NotFoundError) as info:
        await client.file_info("no-such-file")
    # Our words in the message; the server's only in the detail (it may name a patient).
    assert info.value.status == 404 and str(info.value).startswith("HTTP 404: not found")
    assert info.value.detail == "file not found" and "file not found" not in str(info.value)
    assert server.counters["info"] == 1


async def test_info_without_fullpath_is_a_protocol_error(mock_client):
    with aioresponses() as m:
        m.get(f"{MOCK_BASE}/files/abc", payload={"data": {"id": "abc", "name": "x", "size": 1}})
        with pytest.raises(ProtocolError, match="fullpath"):
            await mock_client.file_info("abc")


@pytest.mark.parametrize("bad_id", ["", ".", "..", "a\nb"])
async def test_unusable_file_ids_are_refused_before_any_request(mock_client, bad_id):
    with aioresponses() as m:
        with pytest.raises(ProtocolError):
            await mock_client.file_info(bad_id)
        assert not m.requests


async def test_file_id_is_quoted_into_one_path_segment(mock_client):
    with aioresponses() as m:
        m.get(f"{MOCK_BASE}/files/a%2F..%2Fb", payload={"data": {"id": "a/../b", "fullpath": "https://x/v"}})
        assert (await mock_client.file_info("a/../b")).id == "a/../b"


# -- download --------------------------------------------------------------------------------------

async def test_download_whole_file(client, server):
    rf = await first_file(client, server)
    dl, data = await fetch(client, rf.fullpath, limit=rf.size)
    assert data == server.file_bytes(rf.id) and len(data) == rf.size
    assert (dl.status, dl.offset, dl.total_size, dl.length, dl.bytes_read) == (200, 0, rf.size, rf.size, rf.size)
    assert "auth_code" not in repr(dl)


async def test_download_in_small_chunks(client, server):
    rf = await first_file(client, server)
    async with client.download(rf.fullpath) as dl:
        chunks = [c async for c in dl.iter_chunks(1000)]
    assert all(len(c) <= 1000 for c in chunks) and b"".join(chunks) == server.file_bytes(rf.id)


async def test_download_resumes_with_range(client, server):
    rf = await first_file(client, server)
    dl, data = await fetch(client, rf.fullpath, offset=1000, limit=rf.size)
    assert (dl.status, dl.offset, dl.total_size, dl.length) == (206, 1000, rf.size, rf.size - 1000)
    assert data == server.file_bytes(rf.id)[1000:]


async def test_download_without_range_support_starts_over(client, server):
    server.range_support = False
    rf = await first_file(client, server)
    dl, data = await fetch(client, rf.fullpath, offset=1000, limit=rf.size)
    assert (dl.status, dl.offset) == (200, 0)
    assert data == server.file_bytes(rf.id)


async def test_download_unsatisfiable_range_is_fetched_whole(client, server):
    rf = await first_file(client, server)
    dl, data = await fetch(client, rf.fullpath, offset=rf.size + 10)
    assert (dl.status, dl.offset) == (200, 0) and data == server.file_bytes(rf.id)
    assert server.counters["view"] == 2


async def test_download_with_a_mismatched_206_is_fetched_whole(mock_client):
    link = "https://files.example/clinic/files/view/f1?auth_code=c0ffee&time=1"
    with aioresponses() as m:
        m.get(link, status=206, body=b"BCDEF", headers={"Content-Range": "bytes 1-5/6"}, content_type="x/y")
        m.get(link, status=200, body=b"ABCDEF", content_type="x/y")
        dl, data = await fetch(mock_client, link, offset=3)
        calls = [c for (_, _), cs in m.requests.items() for c in cs]
    assert (dl.offset, data) == (0, b"ABCDEF")
    assert calls[0].kwargs["headers"]["Range"] == "bytes=3-" and "Range" not in calls[1].kwargs["headers"]
    for call in calls:  # a download link gets no API headers
        assert "X-ApiToken" not in call.kwargs["headers"] and "X-AccountCode" not in call.kwargs["headers"]


async def test_download_empty_file(client, server):
    rec = server.add_file("user", server.users[0], "empty.txt", b"")
    info = await client.file_info(rec["id"])
    dl, data = await fetch(client, info.fullpath, offset=0, limit=0)
    assert data == b"" and dl.total_size == 0


async def test_expired_and_altered_links_are_link_expired(client):
    now = [time.time()]
    async with FakeServer(seed=3, users=1, files_per_user=1, link_ttl=5, clock=lambda: now[0]) as srv:
        c = FilesClient(client._session, base_url=srv.base_url, token=srv.api_key, retry=client.retry)
        rf = await first_file(c, srv)
        with pytest.raises(LinkExpiredError) as altered:
            await fetch(c, rf.fullpath.replace("auth_code=", "auth_code=00"))
        now[0] += 60
        with pytest.raises(LinkExpiredError) as expired:
            await fetch(c, rf.fullpath)
        fresh = await c.file_info(rf.id)
        _, data = await fetch(c, fresh.fullpath)
        assert data == srv.file_bytes(rf.id)
        assert srv.counters["view"] == 3  # a download is tried once
    for exc in (altered.value, expired.value):
        assert exc.status == 403 and not is_retryable(exc)
        # Where the link points, never its path (it may name the file) nor its signature.
        assert "auth_code" not in str(exc) and "/files/view/" not in str(exc) and srv.origin + "/…" in str(exc)


async def test_download_of_a_deleted_file_is_not_found(client, server):
    rf = await first_file(client, server)
    server.delete_file(rf.id)
    with pytest.raises(NotFoundError):
        await fetch(client, rf.fullpath)


async def test_truncated_body_is_transient(client, server):
    rf = await first_file(client, server)
    server.set_faults(truncate_body=1.0)
    with pytest.raises(TruncatedBody) as info:
        await fetch(client, rf.fullpath, limit=rf.size)
    assert is_retryable(info.value) and server.counters["fault_truncate_body"] == 1


async def test_truncated_body_is_caught_even_if_aiohttp_says_nothing(mock_client):
    """A body ending before the length we were told (here a 206 without Content-Length)."""
    link = "https://files.example/clinic/files/view/f1?auth_code=c0ffee&time=1"
    with aioresponses() as m:
        m.get(link, status=206, body=b"BCD", headers={"Content-Range": "bytes 1-5/6"}, content_type="x/y")
        with pytest.raises(TruncatedBody, match="3 of 5"):
            await fetch(mock_client, link, offset=1)


async def test_reset_mid_body_is_transient(client, server):
    big = server.add_file("user", server.users[0], "big.bin", size=3 * 2**20)
    info = await client.file_info(big["id"])
    server.set_faults(reset_mid_body=1.0)
    with pytest.raises((TruncatedBody, ConnectionFailed)) as exc:
        await fetch(client, info.fullpath, limit=info.size)
    assert is_retryable(exc.value)


async def test_endless_body_stops_at_the_limit(client, server):
    rf = await first_file(client, server)
    server.set_faults(endless_body=1.0)
    async with client.download(rf.fullpath) as dl:
        assert dl.length is None
        with pytest.raises(ProtocolError, match="past the expected"):
            async for _ in dl.iter_chunks(limit=rf.size + 4096):
                pass
        assert dl.bytes_read <= rf.size + 4096 + 256 * 1024


async def test_wrong_size_is_refused_when_a_limit_is_given(client, server):
    rf = await first_file(client, server)
    server.set_faults(wrong_size=1.0)
    with pytest.raises(ProtocolError, match="announced"):
        await fetch(client, rf.fullpath, limit=rf.size)
    _, data = await fetch(client, rf.fullpath)  # without a limit the caller sees the extra byte itself
    assert len(data) == rf.size + 1


async def test_redirect_to_another_host_is_followed(client, server):
    rf = await first_file(client, server)
    server.set_faults(redirect_other_host=1.0)
    with pytest.raises(ConnectionFailed) as info:  # nothing listens at 127.0.0.2
        await fetch(client, rf.fullpath)
    assert "127.0.0.2" in str(info.value) and "auth_code" not in str(info.value)


@pytest.mark.parametrize(("fault", "error"), [("error_500", ServerError), ("error_503_html", ServerError),
                                               ("error_429", RateLimitedError)])
async def test_download_error_statuses(client, server, fault, error):
    rf = await first_file(client, server)
    server.set_faults(**{fault: 1.0})
    with pytest.raises(error):
        await fetch(client, rf.fullpath)
    assert server.counters["view"] == 1


async def test_unusable_link_is_a_protocol_error(client):
    with pytest.raises(ProtocolError):
        await fetch(client, "ftp://files.example/x?auth_code=1")
    with pytest.raises(ProtocolError):
        await fetch(client, "http://[::1/files/view/x?auth_code=secret")


# -- upload ----------------------------------------------------------------------------------------

async def test_upload_creates_a_file_owned_by_the_token_user(client, server, upload_file):
    uid = server.users[1]
    rf = await client.upload(upload_file, token=server.token_for(uid), filename="Scan 1 – été.pdf")
    assert rf.name == "Scan 1 – été.pdf" and rf.size == upload_file.stat().st_size
    assert rf.owner_id == uid and rf.meta_target_id == uid and rf.category == "user_document"
    assert server.file_bytes(rf.id) == upload_file.read_bytes()
    assert rf.id in {f.id for f in await client.list_files(user(server, 1))}


async def test_upload_category_and_hostile_filename(client, server, upload_file):
    rf = await client.upload(upload_file, token=server.token_for(server.users[0]), category="user_consent",
                             filename='evil"\r\nX-Injected: 1.pdf')
    assert rf.category == "user_consent"
    assert "\n" not in rf.name and "\r" not in rf.name and rf.name.endswith(".pdf")


async def test_upload_outcome_unknown_when_the_answer_is_lost(client, server, upload_file):
    server.set_faults(store_then_drop=1.0)
    before = len(server.files())
    with pytest.raises(UploadOutcomeUnknown) as info:
        await client.upload(upload_file, token=server.token_for(server.users[0]))
    assert not is_retryable(info.value)
    assert server.counters["upload"] == 1
    stored = [f for f in server.files() if f["name"] == upload_file.name]
    assert len(server.files()) == before + 1 and len(stored) == 1  # it WAS stored


@pytest.mark.parametrize(("fault", "error"), [
    ("error_500", UploadOutcomeUnknown),   # may have been stored: the push must reconcile
    ("error_503_html", ServerError),       # refused before any work: safe to retry
    ("error_429", RateLimitedError),
])
async def test_upload_is_never_retried_by_the_client(client, server, upload_file, fault, error):
    server.set_faults(**{fault: 1.0})
    with pytest.raises(error):
        await client.upload(upload_file, token=server.token_for(server.users[0]))
    assert server.counters["upload"] == 1


async def test_upload_transient_errors_can_be_retried_by_the_caller(client, server, upload_file, fake_sleep):
    server.set_faults(error_503_html=1.0)
    policy = RetryPolicy(attempts=4, sleep=fake_sleep, on_retry=lambda *_: server.set_faults(error_503_html=0))
    before = len(server.files())
    rf = await policy.call(client.upload, upload_file, token=server.token_for(server.users[0]))
    assert server.counters["upload"] == 2 and len(server.files()) == before + 1
    assert server.file_bytes(rf.id) == upload_file.read_bytes()  # the file was re-opened for the retry


async def test_upload_with_a_2xx_we_cannot_read_is_outcome_unknown(mock_client, upload_file):
    with aioresponses() as m:
        m.post(f"{MOCK_BASE}/files", body="<html>ok</html>", content_type="text/html")
        m.post(f"{MOCK_BASE}/files", payload={"data": {"name": "no id"}})
        for _ in range(2):
            with pytest.raises(UploadOutcomeUnknown):
                await mock_client.upload(upload_file, token="user-token-1234")


@pytest.mark.parametrize(("exc", "error"), [
    (aiohttp.ServerDisconnectedError(), UploadOutcomeUnknown),
    (aiohttp.SocketTimeoutError("Timeout on reading data from socket"), UploadOutcomeUnknown),
    (aiohttp.ClientOSError(104, "Connection reset by peer"), UploadOutcomeUnknown),
    (aiohttp.ClientPayloadError("Response payload is not completed"), UploadOutcomeUnknown),
    (aiohttp.ConnectionTimeoutError(f"Connection timeout to host {MOCK_BASE}/files"), TimeoutError_),
])
async def test_upload_transport_errors(mock_client, upload_file, exc, error):
    with aioresponses() as m:
        m.post(f"{MOCK_BASE}/files", exception=exc)
        with pytest.raises(error):
            await mock_client.upload(upload_file, token="user-token-1234")


async def test_upload_connection_refused_is_safe_to_retry(http_session, upload_file):
    with socket_bound_but_closed() as port:
        c = FilesClient(http_session, base_url=f"http://127.0.0.1:{port}/api_v3", token="k")
        with pytest.raises(ConnectionFailed):
            await c.upload(upload_file, token="user-token")


async def test_upload_errors_from_the_server(client, server, upload_file, tmp_path):
    utoken = server.token_for(server.users[0])
    with pytest.raises(ForbiddenError):  # an account API key cannot upload
        await client.upload(upload_file, token=server.api_key)
    with pytest.raises(AuthError):
        await client.upload(upload_file, token="not-a-token")
    with pytest.raises(BadRequestError):
        await client.upload(upload_file, token=utoken, category="holiday_photos")
    server.max_upload_bytes = 1000
    with pytest.raises(TooLargeError) as info:
        await client.upload(upload_file, token=utoken)
    assert info.value.status == 413 and not is_retryable(info.value)
    with pytest.raises(FileNotFoundError):
        await client.upload(tmp_path / "missing.pdf", token=utoken)


# -- rename, delete --------------------------------------------------------------------------------

async def test_rename(client, server):
    rf = await first_file(client, server)
    renamed = await client.rename(rf.id, "Renamed & ünïcode name.txt")
    assert renamed.id == rf.id and renamed.name == "Renamed & ünïcode name.txt"
    assert renamed.ext == rf.ext  # only the name changes
    assert (await client.file_info(rf.id)).name == "Renamed & ünïcode name.txt"
    with pytest.raises(BadRequestError):
        await client.rename(rf.id, "")
    with pytest.raises(NotFoundError):
        await client.rename("no-such-file", "x")


async def test_rename_is_retried_on_transient_errors(client, server, fake_sleep):
    rf = await first_file(client, server)
    server.set_faults(error_500=1.0)
    client.retry.on_retry = lambda *_: server.set_faults(error_500=0)
    assert (await client.rename(rf.id, "again.png")).name == "again.png"
    assert server.counters["rename"] == 2 and len(fake_sleep.calls) == 1


async def test_delete(client, server):
    deletable = [f for f in await client.list_files(user(server)) if f.is_deletable]
    assert await client.delete(deletable[0].id) is True
    assert deletable[0].id not in {f["id"] for f in server.files()}
    with pytest.raises(NotFoundError):  # a first try's 404 is an error
        await client.delete(deletable[0].id)
    fixed = [f for f in await client.list_files(Target("visit", server.visits[0])) if not f.is_deletable]
    with pytest.raises(ForbiddenError):
        await client.delete(fixed[0].id)


async def test_delete_404_after_a_lost_answer_counts_as_deleted(mock_client, fake_sleep):
    url = f"{MOCK_BASE}/files/f-1"
    with aioresponses() as m:
        m.delete(url, exception=aiohttp.ServerDisconnectedError())
        m.delete(url, status=404, payload={"error": {"code": 404, "message": "file not found"}})
        assert await mock_client.delete("f-1") is True
        m.delete(url, payload={"data": False})
        assert await mock_client.delete("f-1") is False
    assert len(fake_sleep.calls) == 1


# -- error classes, retries ------------------------------------------------------------------------

async def test_auth_errors(client, server, http_session):
    bad = FilesClient(http_session, base_url=server.base_url, token="wrong-token", retry=client.retry)
    with pytest.raises(AuthError) as info:
        await bad.list_files(user(server))
    assert info.value.status == 401 and not is_retryable(info.value)
    wrong_account = FilesClient(http_session, base_url=server.base_url, token=server.api_key,
                                account_code="someone-else", retry=client.retry)
    with pytest.raises(AuthError):
        await wrong_account.file_info("x")
    assert server.counters["list"] == 1 and server.counters["info"] == 1  # never retried


async def test_forbidden_and_bad_request(client, server, http_session):
    as_user = FilesClient(http_session, base_url=server.base_url, token=server.token_for(server.users[0]),
                          account_code=server.account_code, retry=client.retry)
    with pytest.raises(ForbiddenError) as info:
        await as_user.list_files(user(server, 1))
    assert "only its own files" in info.value.detail and isinstance(info.value, PermanentError)
    assert "only its own files" not in str(info.value)
    with pytest.raises(BadRequestError):
        await client.list_files(user(server), category="bogus")
    assert server.counters["list"] == 2


async def test_429_retry_after_is_honoured(client, server, fake_sleep):
    server.set_faults(error_429=1.0, retry_after=7)
    with pytest.raises(RateLimitedError) as info:
        await client.list_files(user(server))
    assert info.value.retry_after == 7.0
    assert server.counters["list"] == 6  # every try of the policy
    assert fake_sleep.calls == [7.0] * 5


async def test_429_retry_after_is_capped(client, server, fake_sleep):
    server.set_faults(error_429=1.0, retry_after=500)
    client.retry.on_retry = lambda *_: server.set_faults(error_429=0)
    assert len(await client.list_files(user(server))) == 4
    assert fake_sleep.calls == [30.0]


async def test_429_without_header_backs_off(client, server, fake_sleep):
    server.set_faults(error_429_no_header=1.0)
    with pytest.raises(RateLimitedError) as info:
        await client.file_info("anything")
    assert info.value.retry_after is None
    bounds = [client.retry.backoff_bound(n) for n in range(1, 6)]
    assert len(fake_sleep.calls) == 5
    assert all(b / 2 <= w <= b for w, b in zip(fake_sleep.calls, bounds, strict=True))


async def test_429_with_http_date(mock_client, fake_sleep):
    from email.utils import formatdate

    with aioresponses() as m:
        m.get(LIST_RE, status=429, headers={"Retry-After": formatdate(time.time() + 20, usegmt=True)})
        m.get(LIST_RE, payload={"data": []})
        await mock_client.list_files(Target("user", "1"))
    assert len(fake_sleep.calls) == 1 and 17 <= fake_sleep.calls[0] <= 20


async def test_500_is_retried_then_succeeds(client, server, fake_sleep):
    server.set_faults(error_500=1.0)
    client.retry.on_retry = lambda *_: server.set_faults(error_500=0)
    rf = await first_file(client, server)
    assert rf.fullpath
    assert server.counters["list"] == 2 and server.counters["list_500"] == 1


async def test_500_gives_up_after_all_attempts(client, server):
    server.set_faults(error_500=1.0)
    with pytest.raises(ServerError) as info:
        await client.list_files(user(server))
    assert info.value.status == 500 and "internal server error" in info.value.detail
    assert str(info.value).startswith("HTTP 500: server error (")
    assert server.counters["list"] == 6


async def test_503_html_body_is_tolerated(client, server):
    server.set_faults(error_503_html=1.0)
    with pytest.raises(ServerError) as info:
        await client.file_info("x")
    assert str(info.value).startswith("HTTP 503: server error (non-JSON body)")
    assert "<html" not in str(info.value)


@pytest.mark.parametrize("fault", ["garbage_json", "html_200"])
async def test_non_json_200_is_a_protocol_error_not_retried(client, server, fault):
    server.set_faults(**{fault: 1.0})
    with pytest.raises(ProtocolError) as info:
        await client.list_files(user(server))
    assert "non-JSON" in str(info.value)
    assert server.counters["list"] == 1


@pytest.mark.parametrize(("status", "body", "ctype", "error", "text", "detail"), [
    (502, "", "text/plain", ServerError, "HTTP 502: server error (empty body)", None),
    (404, "<html><body>Not Found</body></html>", "text/html", NotFoundError, "HTTP 404: not found (non-JSON body)",
     None),
    (418, '{"error": {"code": 418, "message": "teapot"}}', "application/json", PermanentError,
     "HTTP 418: unexpected answer", "teapot"),
    (400, '{"error": "flat message"}', "application/json", BadRequestError,
     "HTTP 400: the server refused the request as invalid", "flat message"),
    (413, '{"message": "too big"}', "application/json", TooLargeError, "HTTP 413: the file is too large", "too big"),
    (408, "", "text/plain", TimeoutError_, "HTTP 408", None),
    (500, '{"error": {"message": "bad token ' + MOCK_TOKEN + ' at https://h/x?auth_code=1\\n\\u001b[2J"}}',
     "application/json", ServerError, "HTTP 500: server error", "bad token <redacted> at https://h/x\\n\\x1b[2J"),
    (503, '{"error": {"message": "' + "x" * 5000 + '"}}', "application/json", ServerError, "HTTP 503: server error",
     "x" * 200 + "..."),
])
async def test_error_bodies(mock_client, status, body, ctype, error, text, detail):
    """The message is ours (status, class, fixed words); the server's message only in ``detail``: scrubbed,
    escaped, bounded."""
    mock_client.retry = RetryPolicy(attempts=1)
    with aioresponses() as m:
        m.get(f"{MOCK_BASE}/files/abc", status=status, body=body, content_type=ctype)
        with pytest.raises(error) as info:
            await mock_client.file_info("abc")
    msg = str(info.value)
    assert msg.startswith(text) and msg.endswith(f"({MOCK_BASE}/files/abc)")
    assert MOCK_TOKEN not in msg and "auth_code" not in msg and "\n" not in msg
    assert len(msg) < 400
    assert info.value.detail == detail
    if detail:
        assert detail[:20] not in msg


async def test_api_redirects_are_not_followed(mock_client):
    with aioresponses() as m:
        m.get(f"{MOCK_BASE}/files/abc", status=302, headers={"Location": "https://evil.example/steal?x=1"})
        with pytest.raises(ProtocolError, match="unexpected redirect to https://evil.example/…") as info:
            await mock_client.file_info("abc")
    assert "x=1" not in str(info.value)


async def test_connection_refused_is_retried(http_session, fake_sleep):
    with socket_bound_but_closed() as port:
        c = FilesClient(http_session, base_url=f"http://127.0.0.1:{port}/api_v3", token="k",
                        retry=RetryPolicy(attempts=3, sleep=fake_sleep))
        with pytest.raises(ConnectionFailed, match="cannot connect to 127.0.0.1"):
            await c.file_info("x")
    assert len(fake_sleep.calls) == 2


async def test_read_timeout_is_transient(server):
    server.set_faults(latency_ms=200)
    api = ApiConfig(base_url=server.base_url, timeout_connect=2, timeout_read=0.05)
    async with make_session(api, limit=2) as session:
        c = FilesClient(session, base_url=server.base_url, token=server.api_key, retry=RetryPolicy(attempts=1))
        with pytest.raises(TimeoutError_) as info:
            await c.list_files(user(server))
    assert is_retryable(info.value)


async def test_many_concurrent_requests_share_the_pool(client, server):
    files = (await client.list_files(user(server))).files
    results = await asyncio.gather(*(fetch(client, f.fullpath) for f in files * 10))
    assert [len(data) for _, data in results] == [f.size for f in files] * 10


# -- redaction -------------------------------------------------------------------------------------

def _leaks(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s and s in text]


async def test_no_error_or_log_carries_a_secret(client, server, http_session, upload_file, caplog):
    caplog.set_level(logging.DEBUG)
    utoken = server.token_for(server.users[0])
    secrets = [server.api_key, utoken, "auth_code", "wrong-token-zzzz"]
    rf = await first_file(client, server)
    errors: list[BaseException] = []

    async def provoke(coro) -> None:
        try:
            await coro
        except ApiError as exc:
            errors.append(exc)
        else:  # pragma: no cover - each call below must fail
            raise AssertionError("expected an error")

    bad = FilesClient(http_session, base_url=server.base_url, token="wrong-token-zzzz", retry=client.retry)
    await provoke(bad.list_files(user(server)))
    await provoke(client.file_info("missing"))
    await provoke(client.list_files(user(server), category="nope"))
    await provoke(fetch(client, rf.fullpath.replace("auth_code=", "auth_code=ff")))
    await provoke(client.upload(upload_file, token=server.api_key))
    for fault in ("error_500", "error_503_html", "error_429", "garbage_json", "truncate_body",
                  "endless_body", "redirect_other_host", "store_then_drop"):
        server.set_faults(**{fault: 1.0})
        if fault == "store_then_drop":
            await provoke(client.upload(upload_file, token=utoken))
        elif fault in ("truncate_body", "endless_body", "redirect_other_host"):
            await provoke(fetch(client, rf.fullpath, limit=rf.size))
        else:
            await provoke(client.list_files(user(server)))
            if fault != "garbage_json":  # a GET-only fault
                await provoke(client.upload(upload_file, token=utoken))
        server.set_faults(**{fault: 0.0})
    with aioresponses() as m:
        signed = rf.fullpath
        m.get(signed, exception=aiohttp.ConnectionTimeoutError(f"Connection timeout to host {signed}"))
        m.get(signed, exception=aiohttp.TooManyRedirects(
            aiohttp.RequestInfo(aiohttp.client.URL(signed), "GET", {}, aiohttp.client.URL(signed)), ()))
        await provoke(fetch(client, signed))
        await provoke(fetch(client, signed))
    assert len(errors) >= 18
    for exc in errors:
        rendered = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
        assert not _leaks(rendered, secrets), (type(exc), rendered)
    assert not _leaks(caplog.text, secrets)
    timeout = errors[-2]
    assert isinstance(timeout, TimeoutError_) and isinstance(timeout.__cause__, RedactedCause)
    assert "ConnectionTimeoutError" in str(timeout.__cause__)


async def test_foreign_cause_is_kept_when_it_is_safe(client, server):
    rf = await first_file(client, server)
    server.set_faults(truncate_body=1.0)
    with pytest.raises(TruncatedBody) as info:
        await fetch(client, rf.fullpath)
    assert isinstance(info.value.__cause__, aiohttp.ClientPayloadError)


async def test_client_repr_hides_the_token(client, server):
    assert server.api_key not in repr(client) and server.base_url in repr(client)


def test_transient_errors_are_the_retryable_ones():
    for cls in (RateLimitedError, ServerError, ConnectionFailed, TimeoutError_, TruncatedBody):
        assert issubclass(cls, TransientError)
    assert not issubclass(UploadOutcomeUnknown, TransientError)


# -- helpers ---------------------------------------------------------------------------------------

class socket_bound_but_closed:  # noqa: N801 - used like a function
    """A loopback port that nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        return None



async def test_a_large_listing_is_parsed_off_the_loop(mock_client, monkeypatch):
    import syncer.api.client

    monkeypatch.setattr(syncer.api.client, "THREAD_PARSE_ITEMS", 100)  # aioresponses cannot feed a big body
    items = [{"id": f"f{i}", "name": f"s{i}", "size": i} for i in range(500)] + [{"name": "no id"}]
    with aioresponses() as m:
        m.get(LIST_RE, payload={"data": items})
        listing = await mock_client.list_files(Target("visit", "1"))
    assert len(listing) == 500 and listing[499].size == 499
    assert listing.bad_items == ["item 500: file object: required field 'id' is missing"]


async def test_compressed_download_is_not_length_checked(http_session):
    """A server that gzips despite ``Accept-Encoding: identity``: aiohttp decompresses, so the announced
    (compressed) length cannot be compared with the bytes we get."""
    import gzip

    from aiohttp import web

    raw = b"hello " * 1000

    async def view(request: web.Request) -> web.Response:
        assert request.headers["Accept-Encoding"] == "identity"
        return web.Response(body=gzip.compress(raw), headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/files/view/{id}", view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        c = FilesClient(http_session, base_url=f"http://127.0.0.1:{port}/api_v3", token="k")
        dl, data = await fetch(c, f"http://127.0.0.1:{port}/files/view/f1?auth_code=c0ffee&time=1")
    finally:
        await runner.cleanup()
    assert data == raw and dl.length is None and dl.total_size is None
