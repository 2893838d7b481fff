"""Faults: pull and push against the built-in server with every fault at once.

500s, 503s with an HTML body, 429 with and without Retry-After, connections reset mid-body, bodies cut
short, view links that live one second, uploads stored and then dropped unanswered, and 50 ms of
latency on every request, all at the same time.  With retries enough to ride them out, a run exits 0
and every file arrives intact, exactly once.  With retries too few, the run exits 1, recording what
failed, and the next run completes the job, still without a duplicate.

The fast form (default run) moves a few hundred files each way; the long form (``pytest -m slow``)
moves 1,000+ files each way.  Fault draws are seeded: a rerun injects the same faults in the same order
(modulo the interleaving of concurrent requests).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import push
from reliability_util import (
    all_targets,
    audit_pull,
    audit_push,
    build_push_source,
    integrity_ok,
    pull_cfg,
    push_cfg,
    query,
    run_pull,
)

from syncer.fakeserver import FakeServer, Faults

# Every fault at once.  retry_after=1: a 429 carries "Retry-After: 1" (capped by retry.max_wait).
EVERY_FAULT = dict(error_500=0.04, error_503_html=0.04, error_429=0.03, error_429_no_header=0.03, retry_after=1,
                   reset_mid_body=0.04, truncate_body=0.04, store_then_drop=0.10, latency_ms=50)
LINK_TTL = 1
PULL_SIZES = (0, 1, 900, 20_000, 150_000, 600_000)


def injected(srv: FakeServer) -> dict[str, int]:
    return {k.removeprefix("fault_"): v for k, v in sorted(srv.counters.items()) if k.startswith("fault_")}


# -- pull -----------------------------------------------------------------------------------------------

def slow_listing(srv: FakeServer, user: str) -> None:
    """One target's listing arrives 2.1 s after its links were signed (a slow answer): with a 1 s TTL
    every link in it has expired, whatever the speed of the rest of the run."""
    original = srv._list

    async def listing(request: web.Request) -> web.StreamResponse:
        resp = await original(request)
        if request.query.get("target_id") == user:
            await asyncio.sleep(LINK_TTL + 1.1)
        return resp

    srv._list = listing  # type: ignore[method-assign]


async def pull_under_faults(tmp: Path, *, users: int, files_per_user: int, seed: int) -> dict[str, Any]:
    async with FakeServer(seed=seed, users=users, files_per_user=files_per_user, visits=4, files_per_visit=10,
                          hostile_names=True, sizes=PULL_SIZES, link_ttl=LINK_TTL,
                          faults=Faults(**EVERY_FAULT)) as srv:
        original_list = srv._list
        slow_listing(srv, srv.users[0])
        cfg = pull_cfg(srv, tmp, attempts=12, concurrency=32)
        started = time.monotonic()
        stats, code = await run_pull(srv, cfg)
        elapsed = time.monotonic() - started
        assert code == 0, stats
        audit = audit_pull(srv, cfg.manifest.path, cfg.pull.dest)
        assert audit.clean and not audit.temps, audit.summary()
        assert audit.files == len(srv.files()) == stats.files_done
        hits = injected(srv)
        for kind in ("error_500", "error_503_html", "error_429", "error_429_no_header", "reset_mid_body",
                     "truncate_body"):
            assert hits.get(kind, 0) > 0, f"{kind} never struck: {hits}"
        assert srv.counters["view_403"] > 0, "no link expired: the 1 s TTL was not exercised"
        assert srv.counters["view_206"] > 0, "no cut body was resumed with Range"
        # A rerun finds everything in place and downloads nothing.
        srv._list = original_list  # type: ignore[method-assign]
        views = srv.counters["view"]
        stats2, code2 = await run_pull(srv, cfg)
        assert code2 == 0 and stats2.files_done == 0 and srv.counters["view"] == views
        return {"files": audit.files, "bytes": audit.bytes, "injected": hits, "expired_links":
                srv.counters["view_403"], "resumed": srv.counters["view_206"], "seconds": round(elapsed, 1)}


async def test_pull_with_every_fault_at_once_arrives_intact_exactly_once(tmp_path: Path) -> None:
    result = await pull_under_faults(tmp_path, users=6, files_per_user=25, seed=201)
    assert result["files"] >= 190


@pytest.mark.slow
async def test_pull_1000_files_with_every_fault_at_once(tmp_path: Path) -> None:
    result = await pull_under_faults(tmp_path, users=24, files_per_user=40, seed=202)
    assert result["files"] >= 1000
    print(f"\nRELIABILITY pull-faults: {result}")


async def pull_exhausted_then_complete(tmp: Path, *, users: int, files_per_user: int, seed: int) -> dict[str, Any]:
    async with FakeServer(seed=seed, users=users, files_per_user=files_per_user, hostile_names=True,
                          sizes=PULL_SIZES, link_ttl=LINK_TTL, faults=Faults(**EVERY_FAULT)) as srv:
        stingy = pull_cfg(srv, tmp, attempts=1, concurrency=16)   # one try per request: faults win
        stats, code = await run_pull(srv, stingy)
        assert code == 1, stats
        assert stats.outcome == "failed" and stats.failed > 0 and stats.files_done > 0
        rows = query(stingy.manifest.path, "SELECT state, count(*) FROM pull_items GROUP BY state")
        assert dict(rows).get("failed", 0) > 0 and "permanent" not in dict(rows)
        first = audit_pull(srv, stingy.manifest.path, stingy.pull.dest)
        assert not first.corrupt and not first.duplicates, first.summary()  # failed, never wrong
        assert integrity_ok(stingy.manifest.path)
        # The next run (the same faults, the usual retries) finishes the job; only what failed is fetched.
        patient = pull_cfg(srv, tmp, attempts=12, concurrency=16)
        stats2, code2 = await run_pull(srv, patient, targets=all_targets(srv))
        assert code2 == 0, stats2
        assert stats2.files_done == len(first.lost)
        audit = audit_pull(srv, patient.manifest.path, patient.pull.dest)
        assert audit.clean and not audit.temps, audit.summary()
        assert audit.files == len(srv.files())
        return {"failed_first": stats.failed, "files": audit.files, "bytes": audit.bytes}


async def test_pull_retries_exhausted_exit_1_then_the_next_run_completes(tmp_path: Path) -> None:
    result = await pull_exhausted_then_complete(tmp_path, users=4, files_per_user=25, seed=203)
    assert result["failed_first"] > 0


@pytest.mark.slow
async def test_pull_1000_files_retries_exhausted_then_complete(tmp_path: Path) -> None:
    result = await pull_exhausted_then_complete(tmp_path, users=25, files_per_user=40, seed=204)
    assert result["files"] >= 1000
    print(f"\nRELIABILITY pull-exhausted: {result}")


# -- push -----------------------------------------------------------------------------------------------

def assert_push_records(cfg: Any, srv: FakeServer, expected: dict[str, Counter]) -> None:
    """The manifest's upload history and the server agree one to one."""
    recorded = [r for (r,) in query(cfg.manifest.path, "SELECT remote_id FROM push_uploads")]
    assert len(recorded) == len(set(recorded))
    stored = {f["id"] for f in srv.files() if f["target_type"] == "user" and f["target_id"] in expected}
    assert set(recorded) == stored


async def push_under_faults(tmp: Path, *, users: int, files_per_user: int, seed: int) -> dict[str, Any]:
    async with FakeServer(seed=seed, link_ttl=LINK_TTL, faults=Faults(**EVERY_FAULT)) as srv:
        expected = build_push_source(tmp, srv, users, files_per_user, seed=seed)
        cfg = push_cfg(srv, tmp, attempts=12, concurrency=16)
        started = time.monotonic()
        stats, code = await push(srv, cfg)
        elapsed = time.monotonic() - started
        assert code == 0, stats
        audit = audit_push(srv, expected)
        assert audit.clean, audit.summary()
        assert audit.files == users * files_per_user == stats.files_done
        hits = injected(srv)
        for kind in ("error_500", "error_503_html", "error_429", "error_429_no_header", "store_then_drop"):
            assert hits.get(kind, 0) > 0, f"{kind} never struck: {hits}"
        assert stats.adopted >= 1, "no lost answer was reconciled"
        assert_push_records(cfg, srv, expected)
        uploads = srv.counters["upload"]
        stats2, code2 = await push(srv, cfg)
        assert code2 == 0 and stats2.files_done == 0 and srv.counters["upload"] == uploads
        return {"files": audit.files, "bytes": audit.bytes, "injected": hits, "adopted": stats.adopted,
                "seconds": round(elapsed, 1)}


async def test_push_with_every_fault_at_once_uploads_exactly_once(tmp_path: Path) -> None:
    result = await push_under_faults(tmp_path, users=8, files_per_user=40, seed=211)
    assert result["files"] == 320


@pytest.mark.slow
async def test_push_1000_files_with_every_fault_at_once(tmp_path: Path) -> None:
    result = await push_under_faults(tmp_path, users=20, files_per_user=50, seed=212)
    assert result["files"] == 1000
    print(f"\nRELIABILITY push-faults: {result}")


async def push_exhausted_then_complete(tmp: Path, *, users: int, files_per_user: int, seed: int) -> dict[str, Any]:
    async with FakeServer(seed=seed, link_ttl=LINK_TTL, faults=Faults(**EVERY_FAULT)) as srv:
        expected = build_push_source(tmp, srv, users, files_per_user, seed=seed)
        stats, code = await push(srv, push_cfg(srv, tmp, attempts=1, concurrency=16))
        assert code == 1, stats
        assert stats.failed > 0 and stats.files_done > 0
        first = audit_push(srv, expected)
        assert not first.duplicates and not first.corrupt, first.summary()
        cfg = push_cfg(srv, tmp, attempts=12, concurrency=16)
        stats2, code2 = await push(srv, cfg)
        assert code2 == 0, stats2
        audit = audit_push(srv, expected)
        assert audit.clean, audit.summary()
        assert audit.files == users * files_per_user
        assert_push_records(cfg, srv, expected)
        return {"failed_first": stats.failed, "files": audit.files, "bytes": audit.bytes}


async def test_push_retries_exhausted_exit_1_then_the_next_run_completes(tmp_path: Path) -> None:
    result = await push_exhausted_then_complete(tmp_path, users=4, files_per_user=25, seed=213)
    assert result["failed_first"] > 0


@pytest.mark.slow
async def test_push_1000_files_retries_exhausted_then_complete(tmp_path: Path) -> None:
    result = await push_exhausted_then_complete(tmp_path, users=20, files_per_user=50, seed=214)
    assert result["files"] == 1000
    print(f"\nRELIABILITY push-exhausted: {result}")
