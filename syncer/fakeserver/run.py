"""Running the fake server on its own: `serve_forever`, `run_blocking` and `python -m syncer.fakeserver`.

`syncer.fakeserver` re-exports all three; `syncer fake-server` uses `run_blocking`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncer.fakeserver.server import FakeServer


async def serve_forever(srv: FakeServer, on_ready: Callable[[FakeServer], None] | None = None) -> None:
    """Start `srv`, call `on_ready(srv)`, serve until SIGINT/SIGTERM (or cancellation), then stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    await srv.start()
    try:
        if on_ready is not None:
            on_ready(srv)
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await srv.stop()


def run_blocking(srv: FakeServer, on_ready: Callable[[FakeServer], None] | None = None) -> None:
    """Serve `srv` on a new event loop until SIGINT/SIGTERM: for `syncer fake-server`."""
    asyncio.run(serve_forever(srv, on_ready))


def main(argv: list[str] | None = None) -> None:
    """`python -m syncer.fakeserver`: serve, and print one JSON line with base_url, api_key and tokens."""
    p = argparse.ArgumentParser(prog="python -m syncer.fakeserver", description=main.__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=int, default=3)
    p.add_argument("--files-per-user", type=int, default=5)
    p.add_argument("--visits", type=int, default=2)
    p.add_argument("--files-per-visit", type=int, default=3)
    p.add_argument("--hostile-names", action="store_true")
    p.add_argument("--link-ttl", type=float, default=3600)
    p.add_argument("--data-dir")
    a = p.parse_args(argv)
    from syncer.fakeserver.server import FakeServer

    srv = FakeServer(
        seed=a.seed, users=a.users, files_per_user=a.files_per_user, visits=a.visits,
        files_per_visit=a.files_per_visit, hostile_names=a.hostile_names, link_ttl=a.link_ttl,
        data_dir=a.data_dir, port=a.port,
    )  # fmt: skip

    def ready(s: FakeServer) -> None:
        info = {"base_url": s.base_url, "api_key": s.api_key, "account_code": s.account_code,
                "user_tokens": s.user_tokens, "visits": s.visits}  # fmt: skip
        print(json.dumps(info), flush=True)

    run_blocking(srv, ready)
