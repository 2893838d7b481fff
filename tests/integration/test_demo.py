"""`syncer demo`: the README's first command works on a fresh folder, and its results are exact."""

from __future__ import annotations

import subprocess
import sys

from syncer.demo import run_demo


async def test_run_demo_pull_and_push_are_byte_identical(tmp_path):
    result = await run_demo(tmp_path / "demo")
    assert result.ok, (result.pull_mismatches, result.push_mismatches)
    assert result.pull_code == 0 and result.push_code == 0
    assert result.pull_verified == result.pull.files_done > 0
    assert result.push is not None and result.push_verified == result.push.files_done == 9
    mode = (tmp_path / "demo" / "syncer.toml").stat().st_mode & 0o777
    assert mode == 0o600


def test_demo_command_on_a_fresh_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "syncer", "demo", "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MISMATCH" not in proc.stdout
    assert "backed-up files byte-identical" in proc.stdout
    assert "uploaded documents byte-identical" in proc.stdout
    # Status works on what the demo left behind.
    status = subprocess.run([sys.executable, "-m", "syncer", "status", "-c", str(tmp_path / "w" / "syncer.toml"),
                             "--json"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert '"done"' in status.stdout
