"""The built-in Files API server, exercised over loopback with a plain aiohttp client."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import unicodedata
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import syncer
from syncer.fakeserver import FakeServer, Faults, serve_forever
from syncer.fakeserver import seed as seedlib

FILE_KEYS = {"id", "name", "size", "ext", "fullpath", "meta", "creator", "created", "modified", "is_deletable"}


class Clock:
    """A clock the test moves by hand, so link expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def srv(clock: Clock) -> AsyncIterator[FakeServer]:
    async with FakeServer(seed=7, users=3, files_per_user=6, visits=2, files_per_visit=3, clock=clock) as server:
        yield server


@pytest.fixture
def make_server() -> Iterator[Callable[..., FakeServer]]:
    """Builds servers that are never started, and removes their data folders afterwards."""
    made: list[FakeServer] = []

    def make(**kw: Any) -> FakeServer:
        made.append(FakeServer(**kw))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def key(srv: FakeServer) -> dict[str, str]:
    return {"X-ApiToken": srv.api_key, "X-AccountCode": srv.account_code}


def tok(srv: FakeServer, user: str) -> dict[str, str]:
    return {"X-ApiToken": srv.token_for(user)}


async def list_files(
    http: aiohttp.ClientSession, srv: FakeServer, ttype: str, tid: str, headers: dict[str, str] | None = None,
    **params: str,
) -> tuple[int, Any]:  # fmt: skip
    async with http.get(
        srv.base_url + "/files", params={"target_type": ttype, "target_id": tid, **params}, headers=headers or key(srv)
    ) as r:
        return r.status, await r.json(content_type=None)


def upload_form(
    data: bytes, filename: str = "note.txt", category: str | None = "user_document", quote: bool = False
) -> aiohttp.FormData:
    # quote_fields=False: aiohttp's default percent-encodes the filename, and the server stores it as sent.
    form = aiohttp.FormData(quote_fields=quote)
    if category is not None:
        form.add_field("meta.category", category)
    form.add_field("file", io.BytesIO(data), filename=filename, content_type="application/octet-stream")
    return form


# ---- listing and the file object ----------------------------------------------------------------


async def test_list_user_files_shape(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    user = srv.users[0]
    status, body = await list_files(http, srv, "user", user)
    assert status == 200
    files = body["data"]
    assert len(files) == 6
    for f in files:
        assert set(f) == FILE_KEYS
        uuid.UUID(f["id"])
        assert isinstance(f["size"], int) and isinstance(f["created"], int) and isinstance(f["modified"], int)
        assert f["ext"] == seedlib.ext_of(f["name"])
        assert f["meta"]["target"] == {"id": user, "type": "user"}
        assert f["meta"]["account"] == {"code": "democlinic"} and f["meta"]["visible"] is True
        assert f["meta"]["category"] in seedlib.CATEGORIES
        assert set(f["creator"]) == {"id", "username", "email", "full_name", "type"}
        assert f["creator"]["type"] == 200
        assert f["fullpath"].startswith(f"http://127.0.0.1:{srv.port}/clinic/files/view/{f['id']}?auth_code=")
    assert {f["meta"]["category"] for f in files} >= {"user_document", "user_consent", "user_avatar"}
    assert len(srv.users[0]) == 10 and srv.users[0].isdigit()


async def test_list_filters_and_bad_params(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    user = srv.users[0]
    status, body = await list_files(http, srv, "user", user, category="user_consent")
    assert status == 200 and body["data"] and {f["meta"]["category"] for f in body["data"]} == {"user_consent"}
    assert (await list_files(http, srv, "user", "999"))[1] == {"data": []}  # unknown target: empty
    assert (await list_files(http, srv, "patient", user))[0] == 400
    assert (await list_files(http, srv, "user", ""))[0] == 400
    status, body = await list_files(http, srv, "user", user, category="selfie")
    assert status == 400 and body["error"]["code"] == 400 and body["error"]["message"]


async def test_auth_statuses(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    user, other = srv.users[0], srv.users[1]
    async with http.get(srv.base_url + "/files", params={"target_type": "user", "target_id": user}) as r:
        assert r.status == 401 and (await r.json())["error"]["code"] == 401
    assert (await list_files(http, srv, "user", user, {"X-ApiToken": "nope"}))[0] == 401
    assert (await list_files(http, srv, "user", user, {"X-ApiToken": "caf\u00e9".encode().decode("latin-1")}))[0] == 401
    wrong_account = {"X-ApiToken": srv.api_key, "X-AccountCode": "otherclinic"}
    assert (await list_files(http, srv, "user", user, wrong_account))[0] == 401
    # A user token lists its own files only.
    status, body = await list_files(http, srv, "user", user, tok(srv, user))
    assert status == 200 and len(body["data"]) == 6
    assert (await list_files(http, srv, "user", other, tok(srv, user)))[0] == 403
    assert (await list_files(http, srv, "visit", srv.visits[0], tok(srv, user)))[0] == 403


async def test_info(srv: FakeServer, http: aiohttp.ClientSession, clock: Clock) -> None:
    rec = next(r for r in srv.files() if r["target_id"] == srv.users[0])
    async with http.get(f"{srv.base_url}/files/{rec['id']}", headers=key(srv)) as r:
        assert r.status == 200
        first = (await r.json())["data"]
    assert set(first) == FILE_KEYS and first["name"] == rec["name"] and first["size"] == rec["size"]
    clock.now += 10
    async with http.get(f"{srv.base_url}/files/{rec['id']}", headers=tok(srv, srv.users[0])) as r:
        assert r.status == 200
        assert (await r.json())["data"]["fullpath"] != first["fullpath"]  # a fresh link each time
    async with http.get(f"{srv.base_url}/files/{rec['id']}", headers=tok(srv, srv.users[1])) as r:
        assert r.status == 403
    async with http.get(f"{srv.base_url}/files/{uuid.uuid4()}", headers=key(srv)) as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == 404


async def test_visit_listing_has_intake_target(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    visit = srv.visits[0]
    assert visit.isdigit()
    status, body = await list_files(http, srv, "visit", visit)
    assert status == 200 and len(body["data"]) == 3
    intake_ids = {f["meta"]["target"]["id"] for f in body["data"]}
    assert len(intake_ids) == 1 and visit not in intake_ids
    uuid.UUID(intake_ids.pop())
    for f in body["data"]:
        assert f["meta"]["target"]["type"] == "intake"
        assert f["meta"]["category"] == "intake_attachment"
        assert f["is_deletable"] is False
    other = await list_files(http, srv, "visit", srv.visits[1])
    assert {f["id"] for f in other[1]["data"]}.isdisjoint(f["id"] for f in body["data"])


async def test_include_shared(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    shared = [r for r in srv.files() if r["shared_with"]]
    assert shared, "seeding shares some documents"
    rec = shared[0]
    viewer = next(iter(rec["shared_with"]))
    plain = {f["id"] for f in (await list_files(http, srv, "user", viewer))[1]["data"]}
    status, body = await list_files(http, srv, "user", viewer, tok(srv, viewer), include_shared="1")
    with_shared = {f["id"]: f for f in body["data"]}
    assert status == 200 and rec["id"] not in plain and rec["id"] in with_shared
    assert with_shared[rec["id"]]["meta"]["target"]["id"] == rec["owner"] != viewer
    assert set(with_shared) - plain == {r["id"] for r in shared if viewer in r["shared_with"]}
    # The viewer may read the shared file's info, but not rename or delete it.
    async with http.get(f"{srv.base_url}/files/{rec['id']}", headers=tok(srv, viewer)) as r:
        assert r.status == 200
    async with http.delete(f"{srv.base_url}/files/{rec['id']}", headers=tok(srv, viewer)) as r:
        assert r.status == 403


# ---- upload, rename, delete ----------------------------------------------------------------------


async def test_upload_then_list(srv: FakeServer, http: aiohttp.ClientSession, clock: Clock) -> None:
    user = srv.users[1]
    data = os.urandom(5000)
    async with http.post(srv.base_url + "/files", data=upload_form(data, "scan 1.PDF"), headers=tok(srv, user)) as r:
        assert r.status == 200
        f = (await r.json())["data"]
    assert set(f) == FILE_KEYS
    assert f["name"] == "scan 1.PDF" and f["ext"] == "pdf" and f["size"] == 5000
    assert f["meta"]["target"] == {"id": user, "type": "user"} and f["creator"]["id"] == user
    assert f["created"] == int(clock.now)
    assert srv.file_bytes(f["id"]) == data
    rec = next(r for r in srv.files() if r["id"] == f["id"])
    assert rec["owner"] == user and rec["sha256"] == hashlib.sha256(data).hexdigest()
    listed = (await list_files(http, srv, "user", user))[1]["data"]
    assert f["id"] in {x["id"] for x in listed}
    async with http.get(f["fullpath"]) as r:
        assert await r.read() == data


async def test_upload_keeps_the_filename_as_sent(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    headers = tok(srv, srv.users[0])
    names = []
    for quote in (False, True):
        async with http.post(srv.base_url + "/files", data=upload_form(b"x", 'café "1".pdf', quote=quote),
                             headers=headers) as r:  # fmt: skip
            names.append((await r.json())["data"]["name"])
    # Like a real server, no percent-decoding: aiohttp's default quoting would store a mangled name.
    assert names == ['café "1".pdf', "caf%C3%A9%20%221%22.pdf"]


async def test_upload_refusals(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    before = len(srv.files())
    url = srv.base_url + "/files"
    async with http.post(url, data=upload_form(b"x"), headers=key(srv)) as r:
        assert r.status == 403  # the account key cannot upload
    async with http.post(url, data=upload_form(b"x", category="selfie"), headers=tok(srv, srv.users[0])) as r:
        assert r.status == 400
    async with http.post(url, data=upload_form(b"x", category=None), headers=tok(srv, srv.users[0])) as r:
        assert r.status == 400
    form = aiohttp.FormData()
    form.add_field("meta.category", "user_document")
    form.add_field("attachment", b"x", filename="x.txt")  # a file, but not in the field `file`
    async with http.post(url, data=form, headers=tok(srv, srv.users[0])) as r:
        assert r.status == 400 and "'file'" in (await r.json())["error"]["message"]
    async with http.post(url, data={"meta.category": "user_document"}, headers=tok(srv, srv.users[0])) as r:
        assert r.status == 400  # not multipart at all
    async with http.post(url, data=upload_form(b"x"), headers={"X-ApiToken": "bad"}) as r:
        assert r.status == 401
    assert len(srv.files()) == before
    assert not [p for p in srv.data_dir.iterdir() if p.name.startswith(".upload-")]


async def test_upload_too_large_is_413(clock: Clock, http: aiohttp.ClientSession) -> None:
    async with FakeServer(seed=1, users=1, max_upload_bytes=1000, clock=clock) as srv:
        headers = tok(srv, srv.users[0])
        async with http.post(srv.base_url + "/files", data=upload_form(b"a" * 3_000_000), headers=headers) as r:
            assert r.status == 413 and (await r.json())["error"]["code"] == 413
        async with http.post(srv.base_url + "/files", data=upload_form(b"a" * 1000), headers=headers) as r:
            assert r.status == 200  # exactly the limit is fine
        assert [r["size"] for r in srv.files()] == [1000]
        assert sorted(p.name for p in srv.data_dir.iterdir()) == [srv.files()[0]["id"]]


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
async def test_rename(srv: FakeServer, http: aiohttp.ClientSession, clock: Clock, encoding: str) -> None:
    rec = next(r for r in srv.files() if r["target_id"] == srv.users[0] and r["ext"] == "pdf")
    clock.now += 100
    if encoding == "urlencoded":
        data: Any = {"name": "renamed/ä.txt"}
    else:
        data = aiohttp.FormData()
        data.add_field("name", "renamed/ä.txt")
        data.add_field("dummy", b"x", filename="x.bin")  # forces multipart/form-data
    async with http.post(f"{srv.base_url}/files/{rec['id']}", data=data, headers=tok(srv, srv.users[0])) as r:
        assert r.status == 200
        f = (await r.json())["data"]
    assert f["name"] == "renamed/ä.txt" and f["ext"] == "pdf"  # ext stays as it was
    assert f["modified"] == int(clock.now) > f["created"]
    assert next(r for r in srv.files() if r["id"] == rec["id"])["name"] == "renamed/ä.txt"
    async with http.get(f["fullpath"]) as r:
        assert "filename*=UTF-8''renamed%2F%C3%A4.txt" in r.headers["Content-Disposition"]


async def test_rename_errors(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    rec = next(r for r in srv.files() if r["target_id"] == srv.users[0])
    url = f"{srv.base_url}/files/{rec['id']}"
    async with http.post(url, data={"title": "x"}, headers=key(srv)) as r:
        assert r.status == 400
    async with http.post(url, data={"name": ""}, headers=key(srv)) as r:
        assert r.status == 400
    async with http.post(url, data={"name": "x"}, headers=tok(srv, srv.users[1])) as r:
        assert r.status == 403
    async with http.post(f"{srv.base_url}/files/{uuid.uuid4()}", data={"name": "x"}, headers=key(srv)) as r:
        assert r.status == 404
    assert next(r for r in srv.files() if r["id"] == rec["id"])["name"] == rec["name"]


async def test_delete(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    rec = next(r for r in srv.files() if r["deletable"] and r["target_type"] == "user")
    link = srv.view_url(rec["id"])
    async with http.delete(f"{srv.base_url}/files/{rec['id']}", headers=tok(srv, rec["owner"])) as r:
        assert r.status == 200 and await r.json() == {"data": True}
    assert rec["id"] not in {r["id"] for r in srv.files()}
    assert not await asyncio.to_thread(os.path.exists, rec["path"])
    async with http.get(f"{srv.base_url}/files/{rec['id']}", headers=key(srv)) as r:
        assert r.status == 404
    async with http.delete(f"{srv.base_url}/files/{rec['id']}", headers=key(srv)) as r:
        assert r.status == 404
    async with http.get(link) as r:
        assert r.status == 404  # a valid link to a deleted file
    fixed = next(r for r in srv.files() if not r["deletable"])
    async with http.delete(f"{srv.base_url}/files/{fixed['id']}", headers=key(srv)) as r:
        assert r.status == 403
    assert fixed["id"] in {r["id"] for r in srv.files()}


async def test_server_side_rename_and_delete(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    user = srv.users[2]
    a, b = [r for r in srv.files() if r["target_id"] == user][:2]
    srv.rename_file(a["id"], "moved.pdf")
    srv.delete_file(b["id"])
    listed = {f["id"]: f for f in (await list_files(http, srv, "user", user))[1]["data"]}
    assert listed[a["id"]]["name"] == "moved.pdf" and b["id"] not in listed
    added = srv.add_file("user", user, "new.txt", b"hello", created=123)
    listed = {f["id"]: f for f in (await list_files(http, srv, "user", user))[1]["data"]}
    assert listed[added["id"]]["created"] == 123 and listed[added["id"]]["size"] == 5


# ---- the download link ----------------------------------------------------------------------------


async def test_view_bytes_and_headers(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    rec = srv.add_file("user", srv.users[0], 'a "quoted"\nname.pdf', b"%PDF-1.4 hello")
    async with http.get(srv.view_url(rec["id"])) as r:
        assert r.status == 200 and await r.read() == b"%PDF-1.4 hello"
        assert r.headers["Content-Length"] == "14"
        assert r.headers["Content-Type"] == "application/pdf"
        cd = r.headers["Content-Disposition"]
    assert cd.startswith('attachment; filename="a _quoted__name.pdf"')
    assert "filename*=UTF-8''a%20%22quoted%22%0Aname.pdf" in cd
    other = srv.add_file("user", srv.users[0], "noext", b"")
    async with http.get(srv.view_url(other["id"])) as r:
        assert r.status == 200 and await r.read() == b""
        assert r.headers["Content-Type"] == "application/octet-stream" and r.headers["Content-Length"] == "0"


async def test_view_link_checks(srv: FakeServer, http: aiohttp.ClientSession, clock: Clock) -> None:
    rec = srv.files()[0]
    link = srv.view_url(rec["id"])
    async with http.get(link) as r:
        assert r.status == 200
    issued = int(clock.now)
    for bad in (
        link.replace("auth_code=", "auth_code=0"),
        link.replace(f"time={issued}", f"time={issued + 1}"),
        link.replace(f"time={issued}", "time=soon"),
        link.replace(f"time={issued}", f"time=+{issued}"),
        link.replace("auth_code=", "auth_code=%C3%A9"),
        link.split("?")[0],
    ):
        async with http.get(bad) as r:
            assert r.status == 403, bad
    srv.link_ttl = 1
    clock.now += 1.9  # links live at least link_ttl, less than link_ttl + 1
    async with http.get(link) as r:
        assert r.status == 200
    clock.now += 0.2
    async with http.get(link) as r:
        assert r.status == 403 and "expired" in (await r.json())["error"]["message"]
    async with http.get(srv.view_url(rec["id"])) as r:  # a fresh link works again
        assert r.status == 200
    assert srv.counters["view_403"] == 7


async def test_link_expiry_real_clock(http: aiohttp.ClientSession) -> None:
    async with FakeServer(seed=3, users=1, files_per_user=1, link_ttl=0.2) as srv:
        link = srv.view_url(srv.files()[0]["id"])
        async with http.get(link) as r:
            assert r.status == 200
        srv.link_ttl = -1.0  # anything issued before now is stale: no sleeping needed
        async with http.get(link) as r:
            assert r.status == 403


async def test_range_requests(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    data = bytes(range(256)) * 40
    rec = srv.add_file("user", srv.users[0], "r.bin", data)
    link = srv.view_url(rec["id"])
    cases = {
        "bytes=100-": (100, 10240),
        "bytes=10-19": (10, 20),
        "bytes=-5": (10235, 10240),
        "bytes=10-99999": (10, 10240),
    }
    for header, (start, end) in cases.items():
        async with http.get(link, headers={"Range": header}) as r:
            assert r.status == 206, header
            assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/10240"
            assert int(r.headers["Content-Length"]) == end - start
            assert await r.read() == data[start:end]
    async with http.get(link, headers={"Range": "bytes=20000-"}) as r:
        assert r.status == 416 and r.headers["Content-Range"] == "bytes */10240"
    async with http.get(link, headers={"Range": "bytes=9-3"}) as r:
        assert r.status == 200 and await r.read() == data  # invalid (last < first): ignored
    async with http.get(link, headers={"Range": "bytes=0-1,5-6"}) as r:
        assert r.status == 200 and await r.read() == data  # several ranges: ignored
    srv.range_support = False
    async with http.get(link, headers={"Range": "bytes=100-"}) as r:
        assert r.status == 200 and "Content-Range" not in r.headers and await r.read() == data
    assert srv.counters["view_206"] == 4


async def test_large_file_streams_from_disk(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    size = 3 * 2**20 + 17  # over the in-memory cache limit: streamed in chunks from disk
    rec = srv.add_file("user", srv.users[0], "big.bin", size=size)
    assert await asyncio.to_thread(os.path.getsize, rec["path"]) == size
    async with http.get(srv.view_url(rec["id"])) as r:
        body = await r.read()
    assert len(body) == size and hashlib.sha256(body).hexdigest() == rec["sha256"]
    async with http.get(srv.view_url(rec["id"]), headers={"Range": f"bytes={size - 1000}-"}) as r:
        assert r.status == 206 and await r.read() == body[-1000:]
    # The same id-derived content twice: size= is deterministic.
    again = srv.add_file("user", srv.users[0], "big2.bin", size=size)
    assert again["sha256"] != rec["sha256"]  # different ids, different bytes


async def test_resized_image(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    img = srv.add_file("user", srv.users[0], "photo.JPG", b"\xff\xd8not really a jpeg")
    async with http.get(srv.view_url(img["id"]) + "&size=32x24") as r:
        body = await r.read()
        assert r.status == 200 and r.headers["Content-Type"] == "image/png"
    assert body[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(body[16:20], "big") == 32
    doc = srv.add_file("user", srv.users[0], "doc.pdf", b"%PDF")
    async with http.get(srv.view_url(doc["id"]) + "&size=32x24") as r:
        assert r.headers["Content-Type"] == "application/pdf" and await r.read() == b"%PDF"


# ---- faults -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "content_type"),
    [
        ("error_500", 500, "application/json"),
        ("error_503_html", 503, "text/html"),
        ("error_429", 429, "application/json"),
        ("error_429_no_header", 429, "application/json"),
    ],
)
async def test_general_faults(
    srv: FakeServer, http: aiohttp.ClientSession, fault: str, status: int, content_type: str
) -> None:
    rec = next(r for r in srv.files() if r["target_type"] == "user")
    link = srv.view_url(rec["id"])
    before = len(srv.files())
    srv.set_faults(**{fault: 1.0})
    calls = [
        http.get(srv.base_url + "/files", params={"target_type": "user", "target_id": rec["target_id"]},
                 headers=key(srv)),
        http.get(f"{srv.base_url}/files/{rec['id']}", headers=key(srv)),
        http.get(link),
        http.post(srv.base_url + "/files", data=upload_form(b"x"), headers=tok(srv, srv.users[0])),
        http.post(f"{srv.base_url}/files/{rec['id']}", data={"name": "n"}, headers=key(srv)),
        http.delete(f"{srv.base_url}/files/{rec['id']}", headers=key(srv)),
    ]  # fmt: skip
    for call in calls:
        async with call as r:
            assert r.status == status
            assert r.content_type == content_type
            body = await r.read()
            if content_type == "application/json":
                assert json.loads(body)["error"]["code"] == status
            assert ("Retry-After" in r.headers) == (fault == "error_429")
    assert srv.counters[f"fault_{fault}"] == 6
    assert len(srv.files()) == before  # the failed upload stored nothing
    assert next(r for r in srv.files() if r["id"] == rec["id"])["name"] == rec["name"]
    srv.set_faults(**{fault: 0.0})
    async with http.get(link) as r:
        assert r.status == 200


async def test_retry_after_values(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    link = srv.view_url(srv.files()[0]["id"])
    srv.set_faults(error_429=1.0)
    async with http.get(link) as r:
        assert r.headers["Retry-After"] == "0"  # the default 0.05 s is below one whole second
    srv.faults.retry_after = 2.7
    async with http.get(link) as r:
        assert r.status == 429 and r.headers["Retry-After"] == "2"


async def test_fault_rates_are_partial_and_reproducible(clock: Clock, http: aiohttp.ClientSession) -> None:
    outcomes = []
    for _ in range(2):
        async with FakeServer(seed=5, users=1, files_per_user=1, clock=clock, faults=Faults(error_500=0.3)) as srv:
            link = srv.view_url(srv.files()[0]["id"])
            statuses = []
            for _ in range(40):
                async with http.get(link) as r:
                    statuses.append(r.status)
            outcomes.append(statuses)
            assert srv.counters["fault_error_500"] == statuses.count(500)
    assert outcomes[0] == outcomes[1]
    assert 0 < outcomes[0].count(500) < 40


@pytest.mark.parametrize("cached", [True, False], ids=["memory", "disk"])
async def test_reset_mid_body(srv: FakeServer, http: aiohttp.ClientSession, cached: bool) -> None:
    rec = srv.add_file("user", srv.users[0], "r.bin", size=20_000 if cached else 2_000_000)
    srv.set_faults(reset_mid_body=1.0)
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
        async with http.get(srv.view_url(rec["id"])) as r:
            assert r.status == 200 and r.content_length == rec["size"]
            await r.read()
    assert srv.counters["fault_reset_mid_body"] == 1
    assert srv.counters["view_bytes"] <= rec["size"] // 2


@pytest.mark.parametrize("cached", [True, False], ids=["memory", "disk"])
async def test_truncate_body(srv: FakeServer, http: aiohttp.ClientSession, cached: bool) -> None:
    rec = srv.add_file("user", srv.users[0], "t.bin", size=20_000 if cached else 2_000_000)
    srv.set_faults(truncate_body=1.0)
    got = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(srv.view_url(rec["id"])) as r:
            assert r.content_length == rec["size"]
            async for chunk in r.content.iter_any():
                got += chunk
    assert len(got) == rec["size"] // 2
    assert bytes(got) == srv.file_bytes(rec["id"])[: len(got)]
    assert srv.counters["fault_truncate_body"] == 1


@pytest.mark.parametrize("size", [3, 600_000], ids=["memory", "disk"])
async def test_wrong_size(srv: FakeServer, http: aiohttp.ClientSession, size: int) -> None:
    rec = srv.add_file("user", srv.users[0], "w.bin", size=size)
    srv.set_faults(wrong_size=1.0)
    async with http.get(srv.view_url(rec["id"]), headers={"Range": "bytes=1-"}) as r:
        body = await r.read()
        assert r.status == 200 and r.content_length == size + 1  # Range ignored
    assert body == srv.file_bytes(rec["id"]) + b"\0" and srv.counters["fault_wrong_size"] == 1


async def test_endless_body(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    rec = srv.add_file("user", srv.users[0], "e.bin", b"abc")
    srv.set_faults(endless_body=1.0)
    got = 0
    async with http.get(srv.view_url(rec["id"])) as r:
        assert r.status == 200 and r.content_length is None
        assert r.headers.get("Transfer-Encoding") == "chunked"
        async for chunk in r.content.iter_any():
            got += len(chunk)
            if got > 3 * 2**20:
                break
    assert got > 3 * 2**20 and srv.counters["fault_endless_body"] == 1


async def test_redirect_other_host(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    rec = srv.files()[0]
    link = srv.view_url(rec["id"])
    srv.set_faults(redirect_other_host=1.0)
    async with http.get(link, allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == link.replace("127.0.0.1", "127.0.0.2")


@pytest.mark.parametrize("fault", ["garbage_json", "html_200"])
async def test_hostile_api_bodies(srv: FakeServer, http: aiohttp.ClientSession, fault: str) -> None:
    srv.set_faults(**{fault: 1.0})
    for url in (f"{srv.base_url}/files?target_type=user&target_id={srv.users[0]}",
                f"{srv.base_url}/files/{srv.files()[0]['id']}"):  # fmt: skip
        async with http.get(url, headers=key(srv)) as r:
            assert r.status == 200
            with pytest.raises(ValueError):
                json.loads(await r.read())
    assert srv.counters[f"fault_{fault}"] == 2


async def test_store_then_drop(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    user = srv.users[0]
    before = {r["id"] for r in srv.files()}
    srv.set_faults(store_then_drop=1.0)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        async with http.post(srv.base_url + "/files", data=upload_form(b"kept", "lost.txt"), headers=tok(srv, user)):
            pass
    new = [r for r in srv.files() if r["id"] not in before]
    assert len(new) == 1 and new[0]["name"] == "lost.txt" and new[0]["owner"] == user
    assert srv.file_bytes(new[0]["id"]) == b"kept"
    assert srv.counters["fault_store_then_drop"] == 1


async def test_latency(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    srv.set_faults(latency_ms=150)
    t = time.perf_counter()
    assert (await list_files(http, srv, "user", srv.users[0]))[0] == 200
    assert time.perf_counter() - t >= 0.15


async def _drop_midway(srv: FakeServer, request: bytes, *, read: int) -> None:
    """Send ``request`` on a raw connection, read ``read`` bytes of the answer, then leave with a reset."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(request)
    await writer.drain()
    if read:
        await reader.readexactly(read)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.mark.parametrize("when", ["mid-body", "before-the-answer", "mid-upload"])
async def test_a_client_dropping_mid_transfer_logs_no_traceback(
        srv: FakeServer, caplog: pytest.LogCaptureFixture, when: str) -> None:
    """A client that leaves (a killed run) is routine: one debug line, never aiohttp's "Error handling
    request" traceback at error level, whether it leaves during the body, before the answer's headers
    (while the server is still waiting out its latency) or in the middle of an upload."""
    finished = asyncio.Event()
    handler = "_upload" if when == "mid-upload" else "_view"
    original = getattr(srv, handler)

    async def watched(request: Any) -> Any:
        try:
            return await original(request)
        finally:
            finished.set()

    setattr(srv, handler, watched)
    caplog.set_level(logging.DEBUG)  # aiohttp's loggers reach the root's capture
    # The server's own line is caught on its logger: a CLI test may have left "syncer" not propagating.
    caplog.set_level(logging.DEBUG, logger="syncer.fakeserver")
    own: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.DEBUG)
    catcher.emit = own.append  # type: ignore[method-assign]
    logging.getLogger("syncer.fakeserver").addHandler(catcher)
    big = srv.add_file("user", srv.users[0], "big.bin", os.urandom(6 * 2**20))  # streamed from disk
    if when == "mid-upload":
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n' + b"x" * 100_000
        request = (f"POST /clinic/api_v3/files HTTP/1.1\r\nHost: x\r\nX-ApiToken: {srv.token_for(srv.users[0])}\r\n"
                   f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n").encode()
        await _drop_midway(srv, request + head, read=0)
    else:
        if when == "before-the-answer":
            srv.set_faults(latency_ms=300)
        link = srv.view_url(big["id"]).split(str(srv.port), 1)[1]
        await _drop_midway(srv, f"GET {link} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
                           read=200_000 if when == "mid-body" else 0)
    try:
        await asyncio.wait_for(finished.wait(), timeout=10)
        await asyncio.sleep(0.1)  # aiohttp's own handling of the ended request runs after the handler returns
    finally:
        logging.getLogger("syncer.fakeserver").removeHandler(catcher)
    loud = [r for r in [*caplog.records, *own] if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [(r.name, r.levelname, r.getMessage()) for r in loud]
    if when != "mid-body":  # the body writer catches its own ConnectionError; the others reach _endpoint
        gone = [r for r in own if "went away" in r.getMessage()]
        assert len(gone) == 1 and gone[0].levelno == logging.DEBUG
        assert srv.counters[f"{'upload' if when == 'mid-upload' else 'view'}_client_gone"] == 1


def test_set_faults_rejects_unknown_names(make_server: Callable[..., FakeServer]) -> None:
    srv = make_server()
    with pytest.raises(TypeError):
        srv.set_faults(error_404=1.0)
    srv.set_faults(error_500=0.5)
    assert srv.faults.error_500 == 0.5
    for bad in ({"error_500": 7}, {"error_500": float("nan")}, {"latency_ms": -1},
                {"error_429": 0.1, "retry_after": -2}):
        with pytest.raises(ValueError, match="must be"):
            srv.set_faults(**bad)
        with pytest.raises(ValueError, match="must be"):
            Faults(**bad)
    assert (srv.faults.error_500, srv.faults.error_429) == (0.5, 0.0), "a refused change leaves the rates as they were"


# ---- seeding ----------------------------------------------------------------------------------------


def test_seeding_is_deterministic(make_server: Callable[..., FakeServer]) -> None:
    kw: dict[str, Any] = dict(users=3, files_per_user=4, visits=2, files_per_visit=2, hostile_names=True)
    a, b, c = make_server(seed=11, **kw), make_server(seed=11, **kw), make_server(seed=12, **kw)

    def summary(s: FakeServer) -> list[tuple[Any, ...]]:
        return [(r["id"], r["name"], r["size"], r["sha256"], r["created"], r["target_id"]) for r in s.files()]

    assert summary(a) == summary(b)
    assert a.users == b.users and a.visits == b.visits and a.user_tokens == b.user_tokens and a.api_key == b.api_key
    assert a.file_bytes(a.files()[3]["id"]) == b.file_bytes(b.files()[3]["id"])
    assert {r[0] for r in summary(a)}.isdisjoint(r[0] for r in summary(c))
    assert (
        a.add_file("user", a.users[0], "x", size=5000)["sha256"]
        == b.add_file("user", b.users[0], "x", size=5000)["sha256"]
    )


def test_seeded_sizes_mix_and_given_sizes(make_server: Callable[..., FakeServer]) -> None:
    mixed = make_server(seed=2, users=4, files_per_user=20)
    sizes = [r["size"] for r in mixed.files()]
    assert 0 in sizes and any(100 <= s < 1000 for s in sizes) and any(s >= 10_000 for s in sizes)
    assert max(sizes) <= 200_000
    fixed = make_server(seed=2, users=2, files_per_user=3, sizes=(0, 7, 1_000_000))
    assert [r["size"] for r in fixed.files()] == [0, 7, 1_000_000] * 2
    for r in fixed.files():
        assert hashlib.sha256(fixed.file_bytes(r["id"])).hexdigest() == r["sha256"]
        assert fixed.file_path(r["id"]).stat().st_size == r["size"]
    assert {r["name"] for r in fixed.files()} and all(" - " in r["name"] for r in fixed.files())


async def test_hostile_names(clock: Clock, http: aiohttp.ClientSession, make_server: Callable[..., FakeServer]) -> None:
    async with FakeServer(seed=4, users=3, files_per_user=3, visits=1, files_per_visit=2, hostile_names=True,
                          clock=clock) as srv:  # fmt: skip
        first = [f["name"] for f in (await list_files(http, srv, "user", srv.users[0]))[1]["data"]]
        for name in seedlib.HOSTILE_NAMES:
            assert name in first, repr(name)  # exact, through JSON
        assert first.count("report.pdf") == 2
        assert seedlib.CAFE_NFC in first and seedlib.CAFE_NFD in first
        assert unicodedata.normalize("NFC", seedlib.CAFE_NFD) == seedlib.CAFE_NFC
        assert len(seedlib.LONG_NAME_250) == 250 and len(seedlib.LONG_NAME_BYTES.encode()) > 255
        assert {"", ".", "..", "../../etc/passwd", "line1\nline2.txt"} <= set(first)
        # The other targets get one hostile name each, too.
        for ttype, tid in [("user", srv.users[1]), ("user", srv.users[2]), ("visit", srv.visits[0])]:
            names = [f["name"] for f in (await list_files(http, srv, ttype, tid))[1]["data"]]
            assert any(n in seedlib.HOSTILE_NAMES for n in names), (ttype, names)
        # Each one downloads, with its raw name percent-encoded in Content-Disposition.
        nul = next(r for r in srv.files() if r["name"] == "nul\x00byte.txt")
        async with http.get(srv.view_url(nul["id"])) as r:
            assert r.status == 200 and "nul%00byte.txt" in r.headers["Content-Disposition"]
    plain = make_server(seed=4, users=3, files_per_user=3)
    assert not {r["name"] for r in plain.files()} & set(seedlib.HOSTILE_NAMES)


def test_ext_of() -> None:
    assert seedlib.ext_of("a.Tar.GZ") == "gz"
    assert seedlib.ext_of("../../etc/passwd") == ""
    assert seedlib.ext_of("a/b\\c:d.pdf") == "pdf"
    assert seedlib.ext_of("..") == seedlib.ext_of(".") == seedlib.ext_of("") == seedlib.ext_of("noext") == ""


# ---- counters, lifecycle, threads -------------------------------------------------------------------


async def test_counters(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    user = srv.users[0]
    rec = srv.add_file("user", user, "c.bin", b"x" * 1000)
    await list_files(http, srv, "user", user)
    async with http.get(f"{srv.base_url}/files/{rec['id']}", headers=key(srv)) as r:
        await r.read()
    async with http.get(srv.view_url(rec["id"])) as r:
        await r.read()
    async with http.get(srv.view_url(rec["id"]), headers={"Range": "bytes=900-"}) as r:
        await r.read()
    async with http.post(srv.base_url + "/files", data=upload_form(b"u"), headers=tok(srv, user)) as r:
        await r.read()
    async with http.post(f"{srv.base_url}/files/{rec['id']}", data={"name": "d"}, headers=key(srv)) as r:
        await r.read()
    async with http.delete(f"{srv.base_url}/files/{rec['id']}", headers=key(srv)) as r:
        await r.read()
    async with http.delete(f"{srv.base_url}/files/{rec['id']}", headers=key(srv)) as r:
        await r.read()
    c = srv.counters
    assert (c["list"], c["info"], c["view"], c["upload"], c["rename"], c["delete"]) == (1, 1, 2, 1, 1, 2)
    assert c["view_bytes"] == 1100 and c["view_206"] == 1 and c["delete_404"] == 1
    assert not [k for k in c if k.startswith("fault_")]


async def test_stop_removes_own_temp_dir_but_not_a_given_one(tmp_path: Path) -> None:
    srv = FakeServer(seed=1, users=1, files_per_user=2)
    own = srv.data_dir
    async with srv:
        assert len(list(own.iterdir())) == 2
    assert not own.exists()
    async with FakeServer(seed=1, users=1, files_per_user=2, data_dir=tmp_path / "d") as kept:
        path = kept.file_path(kept.files()[0]["id"])
    assert path.parent == tmp_path / "d" and path.exists()
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_run_in_thread_with_urllib() -> None:
    srv = FakeServer(seed=9, users=1, files_per_user=2)
    with srv.run_in_thread() as running:
        user = running.users[0]
        req = urllib.request.Request(
            f"{running.base_url}/files?target_type=user&target_id={user}", headers={"X-ApiToken": running.api_key}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            files = json.load(resp)["data"]
        assert len(files) == 2
        with urllib.request.urlopen(files[0]["fullpath"], timeout=5) as resp:
            assert resp.read() == running.file_bytes(files[0]["id"])
        url = running.base_url
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/files", timeout=2)  # stopped on exit


async def test_serve_forever_stops_on_cancel(http: aiohttp.ClientSession) -> None:
    srv = FakeServer(seed=1, users=1, files_per_user=1)
    ready = asyncio.Event()
    task = asyncio.create_task(serve_forever(srv, lambda s: ready.set()))
    await asyncio.wait_for(ready.wait(), 5)
    assert (await list_files(http, srv, "user", srv.users[0]))[0] == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(aiohttp.ClientConnectionError):
        await list_files(http, srv, "user", srv.users[0])


def test_main_subprocess_prints_info_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncer.fakeserver", "--users", "2", "--files-per-user", "1", "--visits", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(syncer.__file__).resolve().parents[1])},
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["base_url"].startswith("http://127.0.0.1:") and len(info["user_tokens"]) == 2
        user = next(iter(info["user_tokens"]))
        req = urllib.request.Request(
            f"{info['base_url']}/files?target_type=user&target_id={user}",
            headers={"X-ApiToken": info["user_tokens"][user]},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert len(json.load(resp)["data"]) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_handlers_can_be_replaced_on_a_running_server(srv: FakeServer, http: aiohttp.ClientSession) -> None:
    from aiohttp import web

    original = srv._view
    seen: list[str] = []

    async def scripted(request: web.Request) -> web.StreamResponse:
        seen.append(request.match_info["id"])
        return web.Response(status=410) if len(seen) == 1 else await original(request)

    srv._view = scripted  # type: ignore[method-assign]
    link = srv.view_url(srv.files()[0]["id"])
    async with http.get(link) as r:
        assert r.status == 410
    async with http.get(link) as r:
        assert r.status == 200
    assert len(seen) == 2 and srv.counters["view"] == 2 and srv.counters["view_410"] == 1
