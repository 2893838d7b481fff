"""A hostile server: answers that break the contract, one file (or one target) at a time.

For each kind of bad answer: the file it hits fails with an error that names its id (in the manifest
and in the log), every other file is backed up byte-exact, the run ends (exit 1) within a bounded time,
and no bad byte reaches a final path.  Then all the built-in hostile modes at once, at rates, over a
few hundred files; and the next run, once the server behaves, completes (nothing was written off as
permanent because of a bad answer).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from reliability_util import all_targets, audit_pull, check_final_paths, pull_cfg, pull_rows, run_pull

import syncer.api.client as client_mod
from syncer.fakeserver import FakeServer, Faults

TIME_LIMIT = 30.0  # seconds any single scenario may take, all retries included


@pytest.fixture
def records() -> Any:
    """The syncer logger's records at WARNING and above."""
    kept: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    logger = logging.getLogger("syncer")
    handler = Keep(level=logging.WARNING)
    logger.addHandler(handler)
    yield kept
    logger.removeHandler(handler)


def text_of(r: logging.LogRecord) -> str:
    return r.getMessage() + " " + " ".join(f"{k}={v}" for k, v in vars(r).items() if k.startswith("ev_"))


def victim_id(srv: FakeServer) -> str:
    return sorted(f["id"] for f in srv.files() if f["size"] > 0)[0]


async def run_and_check_victim(srv: FakeServer, tmp: Path, records: list, victim: str, *,
                               state: str = "failed", words: str = "", **cfg_kw: Any) -> dict[str, Any]:
    """One pull: the victim fails with an error naming its id; everyone else is intact."""
    cfg = pull_cfg(srv, tmp, attempts=3, **cfg_kw)
    started = time.monotonic()
    stats, code = await asyncio.wait_for(run_pull(srv, cfg), timeout=TIME_LIMIT)
    assert time.monotonic() - started < TIME_LIMIT
    assert code == 1, stats
    rows = {r["file_id"]: r for r in pull_rows(cfg.manifest.path)}
    row = rows[victim]
    assert row["state"] == state, row
    assert victim in row["last_error"], row["last_error"]
    assert words in row["last_error"], row["last_error"]
    assert any(victim in text_of(r) for r in records), "no log line names the file"
    others = set(rows) - {victim}
    audit = audit_pull(srv, cfg.manifest.path, cfg.pull.dest, file_ids=others)
    assert audit.clean and audit.files == len(others) == len(srv.files()) - 1, audit.summary()
    assert not check_final_paths(srv, cfg.manifest.path, cfg.pull.dest)
    assert not (cfg.pull.dest / row["local_path"]).exists(), "a bad body reached a final path"
    return row


# -- scripted answers for one file -------------------------------------------------------------------------

def swap_view(srv: FakeServer, victim: dict[str, str], answer: Callable[[FakeServer, web.Request], Any]) -> None:
    original = srv._view

    async def view(request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] == victim.get("id"):
            return await answer(srv, request)
        return await original(request)

    srv._view = view  # type: ignore[method-assign]


def swap_list(srv: FakeServer, mangle: Callable[[list[dict]], list[Any]]) -> None:
    original = srv._list

    async def listing(request: web.Request) -> web.StreamResponse:
        resp = await original(request)
        doc = json.loads(resp.body)
        return web.json_response({"data": mangle(doc["data"])})

    srv._list = listing  # type: ignore[method-assign]


async def html_sign_in(srv: FakeServer, request: web.Request) -> web.StreamResponse:
    return web.Response(text="<!DOCTYPE html><html><body>Please sign in.</body></html>", content_type="text/html")


async def stalled_body(srv: FakeServer, request: web.Request) -> web.StreamResponse:
    size = srv._files[request.match_info["id"]].size
    resp = web.StreamResponse(headers={"Content-Length": str(size)})
    await resp.prepare(request)
    await resp.write(b"x" * 100)
    await asyncio.sleep(60)  # then silence: only the read timeout ends this
    return resp


async def slow_drip(srv: FakeServer, request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for _ in range(10_000):
        await resp.write(b"\0" * 4096)
        await asyncio.sleep(0.01)
    return resp


@pytest.mark.parametrize(("fault", "words"), [
    ("wrong_size", "announced"),
    ("endless_body", "past the expected"),
    ("redirect_other_host", "127.0.0.2"),
])
async def test_builtin_hostile_download_modes_fail_that_file_only(tmp_path: Path, records: list, fault: str,
                                                                  words: str) -> None:
    async with FakeServer(seed=501, users=2, files_per_user=5, sizes=(1_000, 70_000)) as srv:
        victim = {"id": victim_id(srv)}
        original = srv._view

        async def view(request: web.Request) -> web.StreamResponse:
            srv.set_faults(**{fault: 1.0 if request.match_info["id"] == victim["id"] else 0.0})
            return await original(request)

        srv._view = view  # type: ignore[method-assign]
        await run_and_check_victim(srv, tmp_path, records, victim["id"], words=words)
        assert srv.counters[f"fault_{fault}"] >= 1


@pytest.mark.parametrize(("answer", "words", "cfg"), [
    (html_sign_in, "", {}),                       # a captive portal's page, status 200
    (stalled_body, "timed out", {"timeout_read": 0.5}),
    (slow_drip, "past the expected", {}),         # never silent long enough for a timeout: the size bounds it
], ids=["html-200", "stalled", "slow-drip"])
async def test_scripted_download_answers_fail_that_file_only(tmp_path: Path, records: list, answer, words: str,
                                                              cfg: dict) -> None:
    async with FakeServer(seed=502, users=2, files_per_user=5, sizes=(1_000, 70_000)) as srv:
        victim = {"id": victim_id(srv)}
        swap_view(srv, victim, answer)
        await run_and_check_victim(srv, tmp_path, records, victim["id"], words=words, **cfg)


async def test_listing_size_larger_than_the_bytes_sent_fails_that_file(tmp_path: Path, records: list) -> None:
    async with FakeServer(seed=503, users=2, files_per_user=5, sizes=(1_000,)) as srv:
        victim = victim_id(srv)

        def grow(items: list[dict]) -> list[dict]:
            for it in items:
                if it["id"] == victim:
                    it["size"] += 7
            return items

        swap_list(srv, grow)
        await run_and_check_victim(srv, tmp_path, records, victim, words="")


@pytest.mark.parametrize("info_fault", ["garbage_json", "html_200"])
async def test_a_hostile_answer_to_the_link_refresh_fails_that_file(tmp_path: Path, records: list,
                                                                    info_fault: str) -> None:
    """The listing lacks the victim's fullpath, so a fresh link is asked for, and that answer is junk."""
    async with FakeServer(seed=504, users=2, files_per_user=5) as srv:
        victim = victim_id(srv)

        def drop_fullpath(items: list[dict]) -> list[dict]:
            for it in items:
                if it["id"] == victim:
                    del it["fullpath"]
            return items

        swap_list(srv, drop_fullpath)
        original_info = srv._info

        async def info(request: web.Request) -> web.StreamResponse:
            srv.set_faults(**{info_fault: 1.0})
            try:
                return await original_info(request)
            finally:
                srv.set_faults(**{info_fault: 0.0})

        srv._info = info  # type: ignore[method-assign]
        row = await run_and_check_victim(srv, tmp_path, records, victim, words="HTTP 200")
        # A bad answer is not a verdict on the file: the next run tries again, and succeeds.
        srv._info = original_info  # type: ignore[method-assign]
        cfg = pull_cfg(srv, tmp_path, attempts=3)
        stats, code = await run_pull(srv, cfg)
        assert code == 0, (row, stats)
        assert audit_pull(srv, cfg.manifest.path, cfg.pull.dest).clean


async def test_a_listing_item_without_fullpath_is_fetched_through_a_fresh_link(tmp_path: Path) -> None:
    async with FakeServer(seed=505, users=2, files_per_user=5) as srv:
        swap_list(srv, lambda items: [{k: v for k, v in it.items() if k != "fullpath"} for it in items])
        cfg = pull_cfg(srv, tmp_path)
        stats, code = await run_pull(srv, cfg)
        assert code == 0, stats
        assert srv.counters["info"] >= len(srv.files())
        assert audit_pull(srv, cfg.manifest.path, cfg.pull.dest).clean


@pytest.mark.parametrize(("mangle", "words"), [
    (lambda it: {k: v for k, v in it.items() if k != "id"}, "required field 'id' is missing"),
    (lambda it: {**it, "id": ["not", "an", "id"]}, "'id' has the wrong type"),
    (lambda it: {**it, "size": "lots"}, "'size' is not an integer"),
    (lambda it: {**it, "size": -5}, "'size' is negative"),
    (lambda it: {**it, "name": 12345}, "'name' is not a string"),
    (lambda it: {**it, "fullpath": {"url": "x"}}, "'fullpath' is not a string"),
    (lambda it: "just a string", "not an object"),
], ids=["no-id", "id-list", "size-text", "size-negative", "name-number", "fullpath-object", "item-string"])
async def test_a_malformed_listing_item_is_named_and_the_rest_is_backed_up(tmp_path: Path, records: list,
                                                                           mangle, words: str) -> None:
    async with FakeServer(seed=506, users=2, files_per_user=5) as srv:
        victim = victim_id(srv)
        swap_list(srv, lambda items: [mangle(it) if it["id"] == victim else it for it in items])
        cfg = pull_cfg(srv, tmp_path)
        stats, code = await asyncio.wait_for(run_pull(srv, cfg), timeout=TIME_LIMIT)
        assert code == 1, stats
        lines = [text_of(r) for r in records if words in text_of(r)]
        assert lines, [text_of(r) for r in records]
        if "'id'" not in words and "object" not in words:
            assert any(victim in line for line in lines), lines  # an item with a usable id is named by it
        others = {f["id"] for f in srv.files()} - {victim}
        audit = audit_pull(srv, cfg.manifest.path, cfg.pull.dest, file_ids=others)
        assert audit.clean and audit.files == len(others), audit.summary()
        assert victim not in {r["file_id"] for r in pull_rows(cfg.manifest.path)}


@pytest.mark.parametrize("fault", ["garbage_json", "html_200"])
async def test_a_hostile_listing_fails_that_target_and_the_others_go_on(tmp_path: Path, records: list,
                                                                         fault: str) -> None:
    async with FakeServer(seed=507, users=3, files_per_user=4) as srv:
        bad = srv.users[0]
        original = srv._list

        async def listing(request: web.Request) -> web.StreamResponse:
            srv.set_faults(**{fault: 1.0 if request.query.get("target_id") == bad else 0.0})
            return await original(request)

        srv._list = listing  # type: ignore[method-assign]
        cfg = pull_cfg(srv, tmp_path, attempts=2)
        stats, code = await asyncio.wait_for(run_pull(srv, cfg), timeout=TIME_LIMIT)
        assert code == 1, stats
        assert any(f"user:{bad}" in text_of(r) and "HTTP 200" in text_of(r) for r in records)
        others = {f["id"] for f in srv.files() if f["target_id"] != bad}
        audit = audit_pull(srv, cfg.manifest.path, cfg.pull.dest, file_ids=others)
        assert audit.clean and audit.files == len(others), audit.summary()


async def test_an_endless_listing_is_cut_at_the_limit(tmp_path: Path, records: list,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mod, "MAX_JSON_BODY", 2**20)
    async with FakeServer(seed=508, users=2, files_per_user=3) as srv:
        bad = srv.users[0]
        original = srv._list

        async def listing(request: web.Request) -> web.StreamResponse:
            if request.query.get("target_id") != bad:
                return await original(request)
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b'{"data": [')
            try:
                for _ in range(100_000):
                    await resp.write(b'{"id": "x", "name": "y"},' * 100)
            except ConnectionError:
                pass
            return resp

        srv._list = listing  # type: ignore[method-assign]
        cfg = pull_cfg(srv, tmp_path, attempts=2)
        stats, code = await asyncio.wait_for(run_pull(srv, cfg), timeout=TIME_LIMIT)
        assert code == 1, stats
        assert any(f"user:{bad}" in text_of(r) and "limit" in text_of(r) for r in records)
        others = {f["id"] for f in srv.files() if f["target_id"] != bad}
        assert audit_pull(srv, cfg.manifest.path, cfg.pull.dest, file_ids=others).clean


# -- every hostile mode at once ----------------------------------------------------------------------------

HOSTILE = dict(garbage_json=0.1, html_200=0.1, wrong_size=0.03, endless_body=0.03, redirect_other_host=0.03)


async def hostile_torture(tmp: Path, *, users: int, files_per_user: int, seed: int) -> dict[str, Any]:
    async with FakeServer(seed=seed, users=users, files_per_user=files_per_user, visits=2, files_per_visit=5,
                          hostile_names=True, sizes=(0, 1, 900, 20_000, 150_000), link_ttl=1,
                          faults=Faults(**HOSTILE)) as srv:
        # One listed file in three comes without its fullpath: a fresh link is asked for (and that
        # answer may be junk too).
        swap_list(srv, lambda items: [{k: v for k, v in it.items() if k != "fullpath" or i % 3} for i, it in
                                      enumerate(items)])
        cfg = pull_cfg(srv, tmp, attempts=4, concurrency=16)
        started = time.monotonic()
        stats, code = await asyncio.wait_for(run_pull(srv, cfg), timeout=120)
        elapsed = time.monotonic() - started
        injected = {k: v for k, v in srv.counters.items() if k.startswith("fault_")}
        assert len(injected) == len(HOSTILE), injected  # every mode struck
        assert code == 1, stats
        rows = pull_rows(cfg.manifest.path)
        bad = [r for r in rows if r["state"] != "done"]
        assert bad, "no file failed: the test proved nothing"
        for r in bad:
            assert r["state"] == "failed", r  # retried next run, never written off
            assert r["file_id"] in r["last_error"], r["last_error"]
        done = {r["file_id"] for r in rows if r["state"] == "done"}
        audit = audit_pull(srv, cfg.manifest.path, cfg.pull.dest, file_ids=done)
        assert audit.clean and audit.files == len(done), audit.summary()
        assert not check_final_paths(srv, cfg.manifest.path, cfg.pull.dest)
        # The server mends its ways: the next run completes, fetching only what failed.
        srv.set_faults(**dict.fromkeys(HOSTILE, 0.0))
        views = srv.counters["view"]
        stats2, code2 = await run_pull(srv, cfg, targets=all_targets(srv))
        assert code2 == 0, stats2
        assert stats2.files_done == len(srv.files()) - len(done)
        assert srv.counters["view"] - views <= 3 * stats2.files_done + 3
        audit = audit_pull(srv, cfg.manifest.path, cfg.pull.dest)
        assert audit.clean and not audit.temps, audit.summary()
        return {"files": audit.files, "bytes": audit.bytes, "failed_first": len(bad), "injected": injected,
                "seconds": round(elapsed, 1)}


async def test_every_hostile_mode_at_once(tmp_path: Path) -> None:
    result = await hostile_torture(tmp_path, users=6, files_per_user=25, seed=511)
    assert result["files"] >= 150


@pytest.mark.slow
async def test_every_hostile_mode_at_once_1000_files(tmp_path: Path) -> None:
    result = await hostile_torture(tmp_path, users=25, files_per_user=40, seed=512)
    assert result["files"] >= 1000
    print(f"\nRELIABILITY hostile: {result}")


async def test_a_listing_without_sizes_is_bounded_by_content_length(tmp_path: Path, records: list) -> None:
    """No ``size`` in the listing: the download's Content-Length bounds and checks it; a body with neither
    (chunked, endless) is refused instead of being written until the disk is full."""
    async with FakeServer(seed=509, users=2, files_per_user=5, sizes=(1_000, 70_000)) as srv:
        victim = {"id": victim_id(srv)}
        swap_list(srv, lambda items: [{k: v for k, v in it.items() if k != "size"} for it in items])
        original = srv._view

        async def view(request: web.Request) -> web.StreamResponse:
            srv.set_faults(endless_body=1.0 if request.match_info["id"] == victim["id"] else 0.0)
            return await original(request)

        srv._view = view  # type: ignore[method-assign]
        started = time.monotonic()
        await run_and_check_victim(srv, tmp_path, records, victim["id"], words="size")
        assert time.monotonic() - started < 10
        assert srv.counters["view_bytes"] < sum(f["size"] for f in srv.files()) * 4 + 2**20 * 4


# -- a bad answer must never seed a resume ----------------------------------------------------------------

async def junk_then_too_long(srv: FakeServer, request: web.Request) -> web.StreamResponse:
    """A chunked body of junk in small pieces, going on past the file's size."""
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        for _ in range(1000):
            await resp.write(b"Z" * 7_000)
            await asyncio.sleep(0.001)
    except ConnectionError:
        pass
    return resp


async def html_cut_short(srv: FakeServer, request: web.Request) -> web.StreamResponse:
    """A proxy's HTML page with its own Content-Length, cut off after part of it."""
    resp = web.StreamResponse(status=200, headers={"Content-Length": "5000", "Content-Type": "text/html"})
    await resp.prepare(request)
    await resp.write(b"<html>" + b"x" * 1994)
    await asyncio.sleep(0.05)
    request.transport.close()  # type: ignore[union-attr]
    return resp


@pytest.mark.parametrize("answer", [junk_then_too_long, html_cut_short], ids=["too-long", "cut-html"])
async def test_bytes_of_a_bad_answer_never_seed_a_range_resume(tmp_path: Path, answer) -> None:
    """The bytes received before an answer turned out bad are not a prefix of the file.  Kept as a
    partial, a later Range request would glue the real tail onto them: a corrupt file of the right size,
    recorded done with the hash of the corruption.  They must be thrown away."""
    async with FakeServer(seed=510, users=1, files_per_user=4, sizes=(150_000,)) as srv:
        victim = {"id": victim_id(srv)}
        served = {"n": 0}
        original = srv._view

        async def view(request: web.Request) -> web.StreamResponse:
            if request.match_info["id"] == victim["id"] and served["n"] == 0:
                served["n"] += 1
                return await answer(srv, request)
            return await original(request)

        srv._view = view  # type: ignore[method-assign]
        cfg = pull_cfg(srv, tmp_path, attempts=3)
        for _ in range(2):
            stats, code = await run_pull(srv, cfg)
            if code == 0:
                break
        assert code == 0, stats
        assert served["n"] == 1
        audit = audit_pull(srv, cfg.manifest.path, cfg.pull.dest)
        assert audit.clean and not audit.temps, audit.summary()
