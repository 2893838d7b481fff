"""Crashes: ``syncer pull`` and ``syncer push`` as real processes, SIGKILLed at seeded random points.

Each run is killed once its manifest records a number of files done drawn from ``random.Random(seed)``
(progress, not the clock, times the kill, so every kill lands mid-run on any machine); the next run
starts on what the killed one left (and is itself killed further on), and a last run goes to the end.
After every kill: no partial or foreign file at a final path, the manifest passes ``PRAGMA
integrity_check``, and (push) no document is stored twice.  At the end: everything there, byte-exact,
exactly once, and ``syncer verify --all`` passes.

The fast form (default run) kills 3 times each; the long form (``pytest -m slow``) kills 10 times each,
over 1,000+ files.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from reliability_util import (
    audit_pull,
    audit_push,
    build_push_source,
    check_final_paths,
    done_count,
    integrity_ok,
    kill_when_done,
    pull_rows,
    query,
    run_cli,
    start_cli,
    write_toml,
)

from syncer.fakeserver import FakeServer, Faults

CRASH_FAULTS = dict(error_500=0.02, reset_mid_body=0.02, truncate_body=0.02, latency_ms=50)


def kill_at_seeded_progress(args: list[str], cwd: Path, token: str, *, kills: int, seed: int, table: str,
                            total: int, after_each) -> list[int]:
    """Start ``syncer ARGS`` ``kills`` times and SIGKILL each run once the manifest records a seeded number
    of ``table`` rows done (drawn from ``random.Random(seed)``, increasing, at most 80 % of ``total``, and
    always past what the previous runs did): kills timed by the run's own progress land mid-run on a fast
    or a slow machine alike.  Calls ``after_each()`` after every kill; returns the counts seen at each."""
    rng = random.Random(seed)
    marks = sorted(rng.sample(range(1, total * 4 // 5), kills))
    manifest = cwd / "manifest.sqlite"
    seen = []
    for mark in marks:
        proc = start_cli(args, cwd=cwd, token=token)
        seen.append(kill_when_done(proc, manifest, max(mark, done_count(manifest, table) + 1), table=table))
        if proc.stderr is not None:
            proc.stderr.close()
        after_each()
    return seen


# -- pull -----------------------------------------------------------------------------------------------

def pull_torture(tmp: Path, *, users: int, files_per_user: int, kills: int, seed: int) -> dict:
    sizes = (0, 1, 1_000, 20_000, 150_000, 600_000)
    srv = FakeServer(seed=seed, users=users, files_per_user=files_per_user, visits=2, files_per_visit=5,
                     hostile_names=True, sizes=sizes, link_ttl=1, faults=Faults(**CRASH_FAULTS))
    with srv.run_in_thread():
        cfg = write_toml(tmp, srv, attempts=10, concurrency=4)
        manifest, dest = tmp / "manifest.sqlite", tmp / "backup"
        progress: list[int] = []  # files done after each kill

        def after_each() -> None:
            problems = check_final_paths(srv, manifest, dest)
            assert not problems, problems[:5]
            if manifest.exists():
                assert integrity_ok(manifest)
                # Every file the manifest calls done is on disk, byte-exact, right after the kill.
                done = {r["file_id"] for r in pull_rows(manifest) if r["state"] == "done"}
                audit = audit_pull(srv, manifest, dest, file_ids=done)
                assert not audit.lost and not audit.corrupt, audit.summary()
                progress.append(len(done))

        moments = kill_at_seeded_progress(["pull", "-c", str(cfg), "-q"], tmp, srv.api_key, kills=kills,
                                          seed=seed, table="pull_items", total=len(srv.files()),
                                          after_each=after_each)
        done_before = query(manifest, "SELECT count(*) FROM pull_items WHERE state = 'done'")[0][0]
        assert done_before < len(srv.files()), "the kills came too late: nothing was left to resume"
        final = run_cli(["pull", "-c", str(cfg), "-q"], cwd=tmp, token=srv.api_key, timeout=300)
        assert final.returncode == 0, final.stderr[-3000:]
        audit = audit_pull(srv, manifest, dest)
        assert audit.clean and not audit.temps, audit.summary()
        assert audit.files == len(srv.files())
        verify = run_cli(["verify", "-c", str(cfg), "--all"], cwd=tmp, token=None)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert f"{audit.files} ok, 0 missing, 0 changed, 0 unreadable" in verify.stdout, verify.stdout
        outcomes = [o for (o,) in query(manifest, "SELECT outcome FROM runs ORDER BY started")]
        assert outcomes[-1] == "ok" and outcomes.count("killed") == sum(1 for o in outcomes[:-1] if o != "ok")
        return {"kills": len(moments), "done_at_each_kill": moments, "done_after_each_kill": progress,
                "files": audit.files, "bytes": audit.bytes}


def test_pull_sigkill_at_random_moments_then_rerun_is_complete_and_verified(tmp_path: Path) -> None:
    result = pull_torture(tmp_path, users=8, files_per_user=30, kills=3, seed=301)
    assert result["files"] >= 120


@pytest.mark.slow
def test_pull_sigkill_10_times_over_1000_files(tmp_path: Path) -> None:
    result = pull_torture(tmp_path, users=25, files_per_user=40, kills=10, seed=302)
    assert result["files"] >= 1000
    print(f"\nRELIABILITY pull-crash: {result}")


# -- push -----------------------------------------------------------------------------------------------

def push_torture(tmp: Path, *, users: int, files_per_user: int, kills: int, seed: int) -> dict:
    srv = FakeServer(seed=seed, link_ttl=1, faults=Faults(store_then_drop=0.05, **CRASH_FAULTS))
    with srv.run_in_thread():
        expected = build_push_source(tmp, srv, users, files_per_user, seed=seed)
        cfg = write_toml(tmp, srv, attempts=10, push_concurrency=4)
        manifest = tmp / "manifest.sqlite"

        progress: list[int] = []  # documents stored after each kill

        def after_each() -> None:
            audit = audit_push(srv, expected)
            assert not audit.duplicates and not audit.corrupt, audit.summary()
            progress.append(audit.files)
            if manifest.exists():
                assert integrity_ok(manifest)

        total = sum(sum(c.values()) for c in expected.values())
        moments = kill_at_seeded_progress(["push", "-c", str(cfg), "-q"], tmp, srv.api_key, kills=kills,
                                          seed=seed, table="push_items", total=total, after_each=after_each)
        assert audit_push(srv, expected).files < total, "the kills came too late: nothing was left to resume"
        final = run_cli(["push", "-c", str(cfg), "-q"], cwd=tmp, token=srv.api_key, timeout=300)
        assert final.returncode == 0, final.stderr[-3000:]
        audit = audit_push(srv, expected)
        assert audit.clean, audit.summary()
        assert audit.files == total
        states = dict(query(manifest, "SELECT state, count(*) FROM push_items GROUP BY state"))
        assert states == {"done": total}, states
        # Every upload recorded once, and the server holds exactly the recorded documents.
        recorded = {r for (r,) in query(manifest, "SELECT remote_id FROM push_uploads")}
        stored = {f["id"] for f in srv.files() if f["target_id"] in expected}
        assert recorded == stored
        again = run_cli(["push", "-c", str(cfg), "-q"], cwd=tmp, token=srv.api_key)
        assert again.returncode == 0 and audit_push(srv, expected).clean
        return {"kills": len(moments), "done_at_each_kill": moments, "stored_after_each_kill": progress,
                "files": audit.files, "bytes": audit.bytes}


def test_push_sigkill_at_random_moments_then_rerun_is_exactly_once(tmp_path: Path) -> None:
    result = push_torture(tmp_path, users=8, files_per_user=40, kills=3, seed=311)
    assert result["files"] == 320


@pytest.mark.slow
def test_push_sigkill_10_times_over_1000_files(tmp_path: Path) -> None:
    result = push_torture(tmp_path, users=20, files_per_user=50, kills=10, seed=312)
    assert result["files"] == 1000
    print(f"\nRELIABILITY push-crash: {result}")
