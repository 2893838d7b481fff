"""Crashes: ``syncer pull`` and ``syncer push`` as real processes, SIGKILLed at seeded random moments.

Each run is killed at a moment drawn from ``random.Random(seed)``; the next run starts on what the
killed one left (and may itself be killed), and a last run goes to the end.  After every kill: no
partial or foreign file at a final path, the manifest passes ``PRAGMA integrity_check``, and (push) no
document is stored twice.  At the end: everything there, byte-exact, exactly once, and ``syncer verify
--all`` passes.

The fast form (default run) kills 3 times each; the long form (``pytest -m slow``) kills 10 times each,
over 1,000+ files.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from reliability_util import (
    audit_pull,
    audit_push,
    build_push_source,
    check_final_paths,
    integrity_ok,
    pull_rows,
    query,
    run_cli,
    start_cli,
    write_toml,
)

from syncer.fakeserver import FakeServer, Faults

CRASH_FAULTS = dict(error_500=0.02, reset_mid_body=0.02, truncate_body=0.02, latency_ms=50)


def kill_at_random_moments(args: list[str], cwd: Path, token: str, *, kills: int, seed: int,
                           window: tuple[float, float], after_each) -> tuple[int, list[float]]:
    """Start ``syncer ARGS`` ``kills`` times, SIGKILL each at a moment from ``random.Random(seed)``;
    call ``after_each()`` after every run.  Returns how many kills landed mid-run, and the moments."""
    rng = random.Random(seed)
    landed = 0
    moments = []
    for _ in range(kills):
        moment = round(rng.uniform(*window), 3)
        moments.append(moment)
        proc = start_cli(args, cwd=cwd, token=token)
        deadline = time.monotonic() + moment
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
        after_each()
    return landed, moments


# -- pull -----------------------------------------------------------------------------------------------

def pull_torture(tmp: Path, *, users: int, files_per_user: int, kills: int, seed: int, min_landed: int) -> dict:
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

        landed, moments = kill_at_random_moments(["pull", "-c", str(cfg), "-q"], tmp, srv.api_key, kills=kills,
                                                 seed=seed, window=(0.3, 2.0), after_each=after_each)
        assert landed >= min_landed, f"only {landed} of {kills} kills landed mid-run ({moments})"
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
        return {"kills": landed, "moments": moments, "done_after_each_kill": progress, "files": audit.files,
                "bytes": audit.bytes}


def test_pull_sigkill_at_random_moments_then_rerun_is_complete_and_verified(tmp_path: Path) -> None:
    result = pull_torture(tmp_path, users=8, files_per_user=30, kills=3, seed=301, min_landed=3)
    assert result["files"] >= 120


@pytest.mark.slow
def test_pull_sigkill_10_times_over_1000_files(tmp_path: Path) -> None:
    result = pull_torture(tmp_path, users=25, files_per_user=40, kills=10, seed=302, min_landed=9)
    assert result["files"] >= 1000
    print(f"\nRELIABILITY pull-crash: {result}")


# -- push -----------------------------------------------------------------------------------------------

def push_torture(tmp: Path, *, users: int, files_per_user: int, kills: int, seed: int, min_landed: int) -> dict:
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

        landed, moments = kill_at_random_moments(["push", "-c", str(cfg), "-q"], tmp, srv.api_key, kills=kills,
                                                 seed=seed, window=(0.3, 2.0), after_each=after_each)
        assert landed >= min_landed, f"only {landed} of {kills} kills landed mid-run ({moments})"
        total = sum(sum(c.values()) for c in expected.values())
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
        return {"kills": landed, "moments": moments, "stored_after_each_kill": progress, "files": audit.files,
                "bytes": audit.bytes}


def test_push_sigkill_at_random_moments_then_rerun_is_exactly_once(tmp_path: Path) -> None:
    result = push_torture(tmp_path, users=8, files_per_user=40, kills=3, seed=311, min_landed=3)
    assert result["files"] == 320


@pytest.mark.slow
def test_push_sigkill_10_times_over_1000_files(tmp_path: Path) -> None:
    result = push_torture(tmp_path, users=20, files_per_user=50, kills=10, seed=312, min_landed=9)
    assert result["files"] == 1000
    print(f"\nRELIABILITY push-crash: {result}")
