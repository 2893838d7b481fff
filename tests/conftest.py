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
