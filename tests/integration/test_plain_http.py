"""Plain http only to a loopback address (issue 12, defect 7).

A view link carries its ``auth_code`` and its bytes are patient data: a ``fullpath`` in plain http to
any host but 127.0.0.0/8 or ::1, or a redirect to one, fails that file permanently with a message naming
it, before any connection.  The name ``localhost`` is refused too (a name can resolve elsewhere): the
tests use it for the link because it *would* reach the built-in server, so "nothing was fetched" is
measured by the server's own counters, not assumed from a failed DNS lookup.  The API's ``base_url``
follows the same rule when the config is loaded (exit 2).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from aiohttp import web
from helpers import NO_SERVER, cli, write_config

from syncer import config as config_mod
from syncer.errors import ConfigError
from syncer.fakeserver import FakeServer


def views_of(srv: FakeServer, file_id: str) -> list[str]:
    """Record every view request of ``file_id`` (its path and query) as it reaches the server."""
    seen: list[str] = []
    original = srv._view

    async def view(request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] == file_id:
            seen.append(request.path_qs)
        return await original(request)

    srv._view = view  # type: ignore[method-assign]
    return seen


def rewrite_link(srv: FakeServer, file_id: str, new_origin: str) -> None:
    """The listing gives ``file_id`` a link to ``new_origin`` (same path and signed query)."""
    original = srv._list

    async def listing(request: web.Request) -> web.StreamResponse:
        doc = json.loads((await original(request)).body)
        for item in doc["data"]:
            if item["id"] == file_id:
                item["fullpath"] = item["fullpath"].replace(srv.origin, new_origin)
        return web.json_response(doc)

    srv._list = listing  # type: ignore[method-assign]


def pull(tmp_path: Path, srv: FakeServer) -> tuple[int, str, dict]:
    cfg = write_config(tmp_path, srv, attempts=2, min_wait=0.01, max_wait=0.02)
    result = cli(["pull", "-c", str(cfg)], token=srv.api_key)
    conn = sqlite3.connect(tmp_path / "manifest.sqlite")
    conn.row_factory = sqlite3.Row
    rows = {r["file_id"]: dict(r) for r in conn.execute("SELECT * FROM pull_items")}
    conn.close()
    return result.exit_code, result.output, rows


@pytest.mark.parametrize("origin", ["http://localhost:{port}", "http://example.invalid:{port}"])
def test_a_plain_http_link_to_another_host_fails_that_file_permanently_unfetched(tmp_path: Path, origin: str) -> None:
    srv = FakeServer(seed=1207, users=2, files_per_user=3)
    victim = srv.files()[0]["id"]
    seen = views_of(srv, victim)
    with srv.run_in_thread():
        rewrite_link(srv, victim, origin.format(port=srv.port))
        code, output, rows = pull(tmp_path, srv)
    assert code == 1, output
    assert seen == [] and srv.counters["info"] == 0  # never fetched, not even through a fresh link
    row = rows[victim]
    assert row["state"] == "permanent" and row["error_class"] == "InsecureUrlError", row
    error = row["last_error"]
    assert victim in error and "plain http" in error and "nothing was fetched" in error and "auth_code" not in error
    assert victim in output and "plain http" in output
    assert all(r["state"] == "done" for fid, r in rows.items() if fid != victim)


def test_a_redirect_to_plain_http_is_refused_and_one_to_loopback_followed(tmp_path: Path) -> None:
    srv = FakeServer(seed=1208, users=2, files_per_user=3)
    victim, control = (f["id"] for f in srv.files()[:2])
    seen_victim, seen_control = views_of(srv, victim), views_of(srv, control)  # hops after the first
    original = srv._view

    async def view(request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] in (victim, control) and "hop" not in request.query:
            host = "localhost" if request.match_info["id"] == victim else "127.0.0.1"
            return web.Response(status=302, headers={"Location": f"http://{host}:{srv.port}{request.path_qs}&hop=1"})
        return await original(request)

    srv._view = view  # type: ignore[method-assign]
    with srv.run_in_thread():
        code, output, rows = pull(tmp_path, srv)
    assert code == 1, output
    # The victim's link was asked for (the first hop) but the redirect to http://localhost never followed;
    # the control's redirect to 127.0.0.1 was followed and its file backed up.
    assert len(seen_victim) == 0 and rows[victim]["state"] == "permanent"
    error = rows[victim]["last_error"]
    assert rows[victim]["error_class"] == "InsecureUrlError" and "redirects to http://localhost" in error
    assert victim in error and "auth_code" not in error
    assert len(seen_control) == 1 and "hop=1" in seen_control[0] and rows[control]["state"] == "done"


@pytest.mark.parametrize(("base_url", "ok"), [
    ("http://localhost:9/api_v3", False),
    ("http://example.invalid/api_v3", False),
    ("http://10.0.0.1/api_v3", False),
    ("http://127.0.0.2:9/api_v3", True),
    ("http://[::1]:9/api_v3", True),
    ("https://example.invalid/api_v3", True),
])
def test_the_api_base_url_follows_the_same_rule(tmp_path: Path, base_url: str, ok: bool) -> None:
    cfg = write_config(tmp_path, base_url=base_url, account_code=NO_SERVER["account_code"], targets=["user:1"])
    if ok:
        assert config_mod.load(cfg).api.base_url == base_url
        return
    with pytest.raises(ConfigError, match="plain http"):
        config_mod.load(cfg)
    result = cli(["ls", "user:1", "-c", str(cfg)], token="k" * 20)  # refused before anything is sent
    assert result.exit_code == 2, result.output
    assert "plain http" in result.output and "api.base_url" in result.output
