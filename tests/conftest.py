"""Shared fixtures: the built-in server, an HTTP session, a fast retry policy and a FilesClient on them.

Other test modules may append fixtures below; keep these generic.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from unittest.mock import Mock

import aiohttp
import pytest

from syncer.api.client import FilesClient, make_session
from syncer.api.retry import RetryPolicy
from syncer.config import ApiConfig
from syncer.fakeserver import FakeServer

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
