"""The event loop a run gets (``syncer.run.loop.run_async``): uvloop's where installed, asyncio's on request."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import warnings

import pytest
from helpers import write_config

from syncer.errors import ConfigError
from syncer.fakeserver import FakeServer
from syncer.run.loop import LOOP_ENV, run_async

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
    uvloop = None


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.skipif(uvloop is None, reason="uvloop is not installed here")
def test_uvloop_by_default(monkeypatch):
    monkeypatch.delenv(LOOP_ENV, raising=False)
    assert run_async(loop_module()).startswith("uvloop")
    monkeypatch.setenv(LOOP_ENV, "uvloop")
    assert run_async(loop_module()).startswith("uvloop")


def test_asyncio_loop_on_request(monkeypatch):
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    assert run_async(loop_module()).startswith("asyncio")


def test_a_wrong_setting_is_refused_and_leaves_no_unawaited_coroutine(monkeypatch):
    monkeypatch.setenv(LOOP_ENV, "twisted")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ConfigError, match="SYNCER_EVENT_LOOP"):
            run_async(loop_module())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_pull_on_asyncio_loop_end_to_end(tmp_path):
    """The fallback loop stays a working path (the other CLI tests run on uvloop where installed)."""
    srv = FakeServer(seed=5, users=2, files_per_user=6)
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv)
        env = dict(os.environ, VSEE_API_TOKEN=srv.api_key, **{LOOP_ENV: "asyncio"})
        p = subprocess.run([sys.executable, "-m", "syncer", "pull", "-q", "-c", str(cfg)], env=env,
                           cwd=tmp_path, capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr.decode()[-2000:]
        for f in srv.files():
            if f["target_type"] != "user":
                continue
            got = list((tmp_path / "backup" / "user" / f["target_id"]).rglob("*"))
            assert any(g.is_file() and g.read_bytes() == srv.file_bytes(f["id"]) for g in got), f["id"]
