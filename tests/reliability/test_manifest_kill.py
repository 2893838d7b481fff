"""The manifest's atomic batches: a process SIGKILLed in the middle of ``Manifest.apply`` on a large batch
leaves all of the batch or none of it (SQLite's atomic commit through the WAL).

The kills are placed by the child's own progress, not by the clock (kills timed from a measurement of the
transaction's length landed after the COMMIT on a slow minute and the test flaked).  The child counts the
statements of the transaction through SQLite's trace callback and, at a seeded statement number, prints a
mark; the parent SIGKILLs it on reading the mark.  Three ways, in turn:

- ``pause``: the child stops at the mark (blocked reading its stdin) and is killed there: inside the
  transaction by construction, after SQLite may have spilled uncommitted pages to the WAL;
- ``race``: the child goes on after the mark and is killed wherever it has got to, mid-statement, in the
  COMMIT or after it; where it was is read from what it printed before it died;
- ``commit``: the child stops when the COMMIT statement is about to run, and is killed there.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from reliability_util import batch_counts, seed_batch_manifest

from syncer.manifest import Manifest

BATCH = 30_000        # outcomes in the batch of the fast form; the long form uses 200,000

CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from syncer.manifest import Manifest, Update
    m = Manifest.open(Path(sys.argv[1]))
    n, mark_at, mode = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    updates = [Update("pull_items", ("user", str(i % 100), f"f{i}"),
                      {"state": "done", "sha256": "a" * 64, "bytes": i}, event="done", bump_attempts=True)
               for i in range(n)]
    count = 0
    def trace(sql):
        global count
        if sql.split(None, 1)[0].upper() in ("COMMIT", "RELEASE"):
            print("commit", count, flush=True)
            if mode == "commit":
                sys.stdin.readline()  # the parent kills us here, before the COMMIT runs
            return
        count += 1
        if count == mark_at:
            print("mark", count, flush=True)
            if mode == "pause":
                sys.stdin.readline()  # the parent kills us here, inside the transaction
    m.conn.set_trace_callback(trace)
    print("applying", flush=True)
    m.apply(updates, "batch-run")
    print("applied", count, flush=True)
    m.close()
""")


def run_child(path: Path, n: int, mode: str = "none", mark_at: int = 0) -> tuple[str, int]:
    """Run CHILD on ``path``; with a ``mode`` other than "none", SIGKILL it on its mark (see the module's
    docstring).  Returns (where it was when it died or ended, the statements it had run):
    "in-transaction" (no COMMIT begun), "committing" (the COMMIT begun, not returned) or "finished"."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(n), str(mark_at), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None and proc.stdin is not None
    watchdog = threading.Timer(300, proc.kill)  # a child that never marks must not hang the suite
    watchdog.start()
    try:
        seen = [proc.stdout.readline()]
        assert seen[0].strip() == "applying", seen
        if mode != "none":
            wanted = "commit" if mode == "commit" else "mark"
            while not seen[-1].startswith(wanted):
                seen.append(proc.stdout.readline())
                assert seen[-1], f"the child ended before its {wanted} line: {seen}"
            proc.send_signal(signal.SIGKILL)
        seen.append(proc.stdout.read())
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        proc.stdin.close()
        proc.stdout.close()
    out = "".join(seen)
    if mode == "none":
        assert proc.returncode == 0, out
    else:
        assert proc.returncode == -signal.SIGKILL, out
    last = out.split()
    statements = int(last[last.index("applied") + 1]) if "applied" in last else 0
    phase = "finished" if "applied" in out else "committing" if "commit" in out else "in-transaction"
    return phase, statements


def kill_mid_batch(tmp: Path, *, kills: int, seed: int, batch: int = BATCH) -> dict[str, int]:
    pristine = tmp / "pristine.sqlite"
    seed_batch_manifest(pristine, batch)

    def fresh(name: str) -> Path:
        path = tmp / name
        shutil.copy(pristine, path)
        return path

    def remove(path: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    # One run to the end: all of the batch, and how many statements its transaction runs.
    whole = fresh("whole.sqlite")
    phase, statements = run_child(whole, batch)
    assert phase == "finished" and batch_counts(whole) == (batch, batch, batch, "ok")
    assert statements >= 2 * batch  # an UPDATE and an event INSERT per outcome, after the BEGIN
    remove(whole)

    rng = random.Random(seed)
    # pause, race, pause, race, ... and the last kill at the COMMIT.
    modes = [("pause", "race")[k % 2] for k in range(kills - 1)] + ["commit"]
    seen = {"in-transaction": 0, "committing": 0, "finished": 0, "none": 0, "all": 0}
    for k, mode in enumerate(modes):
        path = fresh(f"kill{k}.sqlite")
        # Anywhere from the first UPDATE on; a race is marked early enough to die before the COMMIT.
        mark_at = rng.randint(2, statements if mode == "pause" else statements * 9 // 10)
        phase, _ = run_child(path, batch, mode, mark_at)
        done, bumped, events, check = batch_counts(path)
        assert check == "ok"
        assert (done, bumped, events) in ((0, 0, 0), (batch, batch, batch)), (mode, mark_at, phase, done, events)
        if mode == "pause":
            assert phase == "in-transaction", phase
        if mode in ("pause", "commit"):
            assert done == 0, f"a batch killed before its COMMIT ({mode} at {mark_at}) left rows behind"
        if phase == "in-transaction":
            assert done == 0, "a batch killed before its COMMIT left rows behind"
        if phase == "finished":
            assert done == batch, "a committed batch was lost"
        seen[phase] += 1
        seen["all" if done else "none"] += 1
        Manifest.open(path).close()  # the manifest opens and is usable after the crash
        remove(path)
    return {"kills": kills, "batch": batch, "statements": statements, **seen}


def test_a_batch_killed_mid_way_is_all_or_nothing(tmp_path: Path) -> None:
    result = kill_mid_batch(tmp_path, kills=3, seed=701)
    assert result["in-transaction"] >= 1, result  # the paused kill, by construction


@pytest.mark.slow
def test_a_batch_killed_mid_way_is_all_or_nothing_10_times(tmp_path: Path) -> None:
    result = kill_mid_batch(tmp_path, kills=10, seed=702, batch=200_000)
    assert result["in-transaction"] >= 5, result  # the five paused kills, by construction
    print(f"\nRELIABILITY manifest-batch: {result}")
