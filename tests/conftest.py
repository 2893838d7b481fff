"""Shared fixtures: the built-in server, an HTTP session, a fast retry policy and a FilesClient on them, and
factory fixtures that run a pull or a push (arq's ``worker`` fixture is the model: the fixture returns a
function, the test calls it with the server and whatever it overrides).

This folder is on sys.path (pyproject's ``pythonpath``), so ``from helpers import ...`` works in every
sub-folder.  Other test modules may append fixtures below; keep these generic.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import aiohttp
import helpers
import pytest

from syncer.api.client import FilesClient, make_session
from syncer.api.retry import RetryPolicy
from syncer.config import ApiConfig, Config
from syncer.fakeserver import FakeServer
from syncer.models import Target
from syncer.run.stats import RunStats

# -- aioresponses shim (pitfalls.md): aioresponses 0.7.9 builds ClientResponse without the
# `stream_writer` argument that aiohttp 3.14 requires (aioresponses #289).
try:
    import aioresponses.core as _aioresponses_core
except ImportError:  # pragma: no cover - aioresponses is a test dependency
    _aioresponses_core = None

if _aioresponses_core is not None and "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters:

    class _ShimClientResponse(aiohttp.ClientResponse):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("stream_writer", Mock(output_size=0))
            super().__init__(*args, **kwargs)

    _aioresponses_core.ClientResponse = _ShimClientResponse


class FakeSleep:
    """An injectable ``sleep`` that records the waits asked for and takes no time."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)

    @property
    def total(self) -> float:
        return sum(self.calls)


@pytest.fixture
def fake_sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
def retry_policy(fake_sleep: FakeSleep) -> RetryPolicy:
    """Six tries, the default caps, no real waiting (see ``fake_sleep.calls``)."""
    return RetryPolicy(attempts=6, max_wait=30.0, min_wait=0.2, sleep=fake_sleep)


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    """A small seeded server: 3 users with 4 files each, 2 visits with 2 files each."""
    async with FakeServer(seed=1, users=3, files_per_user=4, visits=2, files_per_visit=2) as srv:
        yield srv


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    session = make_session(ApiConfig(timeout_connect=5.0, timeout_read=10.0), limit=16)
    async with session:
        yield session


@pytest.fixture
async def client(server: FakeServer, http_session: aiohttp.ClientSession, retry_policy: RetryPolicy) -> FilesClient:
    """A FilesClient on ``server`` with its account API key and the fast ``retry_policy``."""
    return FilesClient(http_session, base_url=server.base_url, token=server.api_key,
                       account_code=server.account_code, retry=retry_policy)


# -- factories: a config, a pull run, a push run -------------------------------------------------------------

RunResult = Awaitable[tuple[RunStats, int]]


@pytest.fixture
def pull_config(tmp_path: Path) -> Callable[..., Config]:
    """``pull_config(srv, attempts=.., concurrency=.., timeout_read=.., dest=.., manifest=..)``: an in-memory
    pull config for ``srv`` with its manifest and backup folder in ``tmp_path``, fast retries."""

    def make(srv: FakeServer, **overrides: Any) -> Config:
        return helpers.pull_config(srv, tmp_path, **overrides)

    return make


@pytest.fixture
def run_pull(pull_config: Callable[..., Config]) -> Callable[..., RunResult]:
    """``await run_pull(srv, cfg=None, targets=None, token=None, client_factory=None, **options)``: a pull in
    this process; ``cfg`` defaults to ``pull_config(srv)``, ``targets`` to every seeded target,
    ``options`` override PullOptions.  Returns (stats, exit code)."""

    def run(srv: FakeServer, cfg: Config | None = None, *, targets: tuple[Target, ...] | None = None,
            **kw: Any) -> RunResult:
        return helpers.pull(srv, cfg if cfg is not None else pull_config(srv), targets=targets, **kw)

    return run


@pytest.fixture
def run_push(tmp_path: Path) -> Callable[..., RunResult]:
    """``await run_push(srv, cfg=None, users=(), token=None, client_factory=None)``: a push in this process;
    ``cfg`` is a Config or a TOML path, by default ``tmp_path / "syncer.toml"``.  Returns (stats, exit code)."""

    def run(srv: FakeServer, cfg: Config | Path | None = None, **kw: Any) -> RunResult:
        return helpers.push(srv, cfg if cfg is not None else tmp_path / "syncer.toml", **kw)

    return run


# -- S3: one moto server per test module (imported lazily: only S3 tests pay for moto) -----------------
S3_BUCKET = "syncer-test"


class MotoS3:
    """A moto S3 server on 127.0.0.1 and a boto3 client on it (the test's independent view of the bucket).

    ``requests`` holds ``(method, path)`` of every request the server answered (werkzeug's log line,
    kept out of the test output), so a test can count uploads."""

    def __init__(self, server, endpoint: str):
        import boto3

        self.server = server
        self.endpoint = endpoint
        self.bucket = S3_BUCKET
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                   aws_access_key_id="testing-key-id", aws_secret_access_key="testing-secret-key")
        self.requests: list[tuple[str, str]] = []

    def keys(self, prefix: str = "") -> dict[str, dict]:
        """Every object under ``prefix``: key -> the listing's entry (Size, LastModified, ETag)."""
        out: dict[str, dict] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj
        return out

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def uploads(self) -> list[dict]:
        """Incomplete multipart uploads in the bucket."""
        return self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])

    def puts(self) -> list[str]:
        """The paths of requests that write an object (PUT, and the POSTs of a multipart upload)."""
        return [path for method, path in self.requests
                if method == "PUT" or (method == "POST" and not path.endswith("?delete"))]

    def empty(self) -> None:
        for up in self.uploads():
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
        keys = list(self.keys())
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
        self.requests.clear()


@pytest.fixture(scope="module")
def moto_s3():
    """A ThreadedMotoServer on a free loopback port for the module, with the bucket ``S3_BUCKET``."""
    import logging
    import re
    import socket

    from moto.server import ThreadedMotoServer

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = MotoS3(server, f"http://127.0.0.1:{port}")
    line = re.compile(r'"([A-Z]+) (\S+) HTTP')

    class Requests(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if m := line.search(record.getMessage()):
                s3.requests.append((m.group(1), m.group(2)))

    wz = logging.getLogger("werkzeug")
    saved = (wz.level, wz.propagate, list(wz.handlers))
    wz.setLevel(logging.INFO)
    wz.propagate = False  # werkzeug logs every request: counted here, never printed
    wz.handlers = [Requests()]
    try:
        s3.client.create_bucket(Bucket=S3_BUCKET)
        yield s3
    finally:
        server.stop()
        wz.setLevel(saved[0])
        wz.propagate = saved[1]
        wz.handlers = saved[2]


@pytest.fixture
def s3(moto_s3, monkeypatch):
    """The module's moto server, emptied, with test credentials in the environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    moto_s3.empty()
    yield moto_s3
    moto_s3.empty()
