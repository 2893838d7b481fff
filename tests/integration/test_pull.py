"""pull end to end against the built-in server over loopback."""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from pathlib import Path

from reliability_util import pull_rows

from syncer.config import Config
from syncer.fakeserver import FakeServer, Faults


def expected_files(srv: FakeServer) -> dict[str, dict]:
    """Every file a listing of each seeded target returns (user files by owner, visit files by visit)."""
    return {f["id"]: f for f in srv.files()}


def assert_faithful(srv: FakeServer, cfg: Config) -> list[dict]:
    dest = cfg.pull.dest.resolve()
    rows = pull_rows(cfg.manifest.path)
    assert rows, "the manifest recorded nothing"
    by_id = expected_files(srv)
    for row in rows:
        assert row["state"] == "done", row
        path = (dest / row["local_path"]).resolve()
        assert path.is_relative_to(dest)
        data = path.read_bytes()
        assert data == srv.file_bytes(row["file_id"]), row["file_id"]
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert row["remote_name"] == by_id[row["file_id"]]["name"]
    for folder, _dirs, files in os.walk(dest):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
        leftovers = [f for f in files if f.startswith(".")]
        assert not leftovers, f"temp files left in {folder}: {leftovers}"
    return rows


async def test_full_pull_hostile_names_then_rerun_downloads_nothing(pull_config, run_pull):
    async with FakeServer(seed=3, users=3, files_per_user=8, visits=2, files_per_visit=3,
                          hostile_names=True) as srv:
        cfg = pull_config(srv)
        old_umask = os.umask(0)
        try:
            stats, code = await run_pull(srv, cfg)
        finally:
            os.umask(old_umask)
        assert code == 0, stats
        rows = assert_faithful(srv, cfg)
        assert len(rows) == stats.files_done == len(srv.files())
        # Every file is inside its target's folder, and names that collide got distinct paths.
        assert len({unicodedata.normalize("NFC", r["local_path"]).casefold() for r in rows}) == len(rows)
        for r in rows:
            assert r["local_path"].startswith(f"{r['target_type']}/{r['target_id']}/")
            assert len(Path(r["local_path"]).name.encode()) <= 255
        views = srv.counters["view"]
        stats2, code2 = await run_pull(srv, cfg)
        assert code2 == 0 and stats2.files_done == 0 and stats2.skipped == len(rows)
        assert srv.counters["view"] == views, "a rerun fetched files again"


async def test_pull_under_faults_arrives_intact(pull_config, run_pull):
    faults = Faults(error_500=0.10, error_429=0.05, retry_after=0.01, reset_mid_body=0.03, truncate_body=0.03)
    async with FakeServer(seed=5, users=4, files_per_user=15, visits=2, files_per_visit=5, hostile_names=True,
                          faults=faults, link_ttl=1, sizes=(0, 100, 5_000, 70_000, 300_000)) as srv:
        cfg = pull_config(srv, attempts=12)
        stats, code = await run_pull(srv, cfg)
        assert code == 0, stats
        assert_faithful(srv, cfg)
        injected = sum(v for k, v in srv.counters.items() if k.startswith("fault_"))
        assert injected > 0, "no fault was injected: the test proved nothing"


async def test_expired_links_are_refreshed(pull_config, run_pull):
    clock = {"now": 1_700_000_000.0}
    srv = FakeServer(seed=2, users=1, files_per_user=5, link_ttl=10, clock=lambda: clock["now"])
    orig_list = srv._list

    async def list_then_age(request):
        resp = await orig_list(request)
        clock["now"] += 60  # every link in this listing has now expired
        return resp

    srv._list = list_then_age  # type: ignore[method-assign]  # bound when the server starts
    async with srv:
        cfg = pull_config(srv, concurrency=2)
        stats, code = await run_pull(srv, cfg)
        assert code == 0, stats
        assert srv.counters["view_403"] >= 5, "the links did not expire: the test proved nothing"
        assert srv.counters["info"] >= 5
        assert_faithful(srv, cfg)


async def test_remote_rename_and_delete_are_recorded_and_nothing_is_deleted_locally(pull_config, run_pull):
    async with FakeServer(seed=4, users=1, files_per_user=4) as srv:
        cfg = pull_config(srv)
        await run_pull(srv, cfg)
        rows = {r["file_id"]: r for r in pull_rows(cfg.manifest.path)}
        ids = sorted(rows)
        srv.rename_file(ids[0], "renamed.pdf")
        srv.delete_file(ids[1])
        stats, code = await run_pull(srv, cfg)
        assert code == 0 and stats.files_done == 0
        after = {r["file_id"]: r for r in pull_rows(cfg.manifest.path)}
        assert after[ids[0]]["remote_name"] == "renamed.pdf"
        assert after[ids[0]]["local_path"] == rows[ids[0]]["local_path"], "local paths are stable"
        assert after[ids[1]]["state"] == "remote_deleted"
        assert (cfg.pull.dest / rows[ids[1]]["local_path"]).exists(), "a backup never deletes"


async def test_missing_local_file_is_fetched_again(pull_config, run_pull):
    async with FakeServer(seed=6, users=1, files_per_user=3) as srv:
        cfg = pull_config(srv)
        await run_pull(srv, cfg)
        row = pull_rows(cfg.manifest.path)[0]
        (cfg.pull.dest / row["local_path"]).unlink()
        stats, code = await run_pull(srv, cfg)
        assert code == 0 and stats.files_done == 1
        assert (cfg.pull.dest / row["local_path"]).read_bytes() == srv.file_bytes(row["file_id"])


async def test_exhausted_retries_exit_1_then_next_run_completes(pull_config, run_pull):
    from aiohttp import web

    srv = FakeServer(seed=7, users=2, files_per_user=6)
    orig_view = srv._view
    broken = {"on": True}

    async def flaky_view(request):
        if broken["on"]:
            return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")
        return await orig_view(request)

    srv._view = flaky_view  # type: ignore[method-assign]  # bound when the server starts
    async with srv:
        cfg = pull_config(srv, attempts=2)
        stats, code = await run_pull(srv, cfg)
        assert code == 1 and stats.failed == len(srv.files()) and stats.files_done == 0
        rows = pull_rows(cfg.manifest.path)
        assert {r["state"] for r in rows} == {"failed"}
        assert all(r["error_class"] == "ServerError" and r["attempts"] == 1 for r in rows)
        broken["on"] = False
        stats, code = await run_pull(srv, cfg)
        assert code == 0 and stats.files_done == len(srv.files())
        rows = assert_faithful(srv, cfg)
        assert all(r["attempts"] == 2 for r in rows)


async def test_api_unreachable_after_retries_is_fatal(pull_config, run_pull):
    async with FakeServer(seed=7, users=2, files_per_user=2, faults=Faults(error_500=1.0)) as srv:
        cfg = pull_config(srv, attempts=2)
        stats, code = await run_pull(srv, cfg)
        assert code == 3
        assert stats.outcome == "fatal" and "unreachable" in (stats.fatal_error or "")


async def test_rejected_token_stops_the_run(pull_config, run_pull):
    async with FakeServer(seed=7, users=2, files_per_user=2) as srv:
        stats, code = await run_pull(srv, pull_config(srv, concurrency=2), token="not-the-key")
        assert code == 3 and stats.outcome == "fatal"
        assert "not-the-key" not in (stats.fatal_error or "")
        assert srv.counters["view"] == 0


async def test_not_found_is_permanent_and_failed_counts_attempts(pull_config, run_pull):
    from aiohttp import web

    srv = FakeServer(seed=8, users=1, files_per_user=3)
    orig_view = srv._view
    victim: dict[str, str] = {}

    async def view_404_for_victim(request):
        if request.match_info.get("id") == victim.get("id"):
            return web.json_response({"error": {"code": 404, "message": "gone"}}, status=404)
        return await orig_view(request)

    srv._view = view_404_for_victim  # type: ignore[method-assign]  # bound when the server starts
    async with srv:
        victim["id"] = sorted(f["id"] for f in srv.files())[0]
        cfg = pull_config(srv, attempts=2)
        stats, code = await run_pull(srv, cfg)
        rows = {r["file_id"]: r for r in pull_rows(cfg.manifest.path)}
        assert code == 1
        assert rows[victim["id"]]["state"] == "permanent"
        assert rows[victim["id"]]["error_class"] == "NotFoundError"
        assert rows[victim["id"]]["attempts"] == 1
        assert stats.permanent == 1 and stats.files_done == 2
        # The next run tries it once more (the server may serve it again) and is red again while it fails.
        views = srv.counters["view"]
        stats, code = await run_pull(srv, cfg)
        assert srv.counters["view"] == views + 1
        assert code == 1 and stats.permanent == 1 and stats.skipped == 2
        assert {r["file_id"]: r for r in pull_rows(cfg.manifest.path)}[victim["id"]]["attempts"] == 2
