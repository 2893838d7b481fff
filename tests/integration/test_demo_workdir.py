"""``syncer demo --workdir``: never over a real setup (issue 12, defect 8)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from syncer.manifest import Manifest


def demo(workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncer", "demo", "-q", "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "SYNCER_CONFIG": ""})


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (stat.S_IMODE(p.stat().st_mode), p.read_bytes() if p.is_file() else b"")
            for p in sorted(folder.rglob("*"))}


def test_a_folder_with_a_real_setup_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    real = tmp_path / "clinic"
    real.mkdir()
    (real / "syncer.toml").write_text('[api]\nbase_url = "https://files.example.org"\n', encoding="utf-8")
    (real / "tokens.csv").write_text("user_id,token\n42,a-real-patient-token\n", encoding="utf-8")
    os.chmod(real / "tokens.csv", 0o644)
    manifest = Manifest.open(real / "syncer-manifest.sqlite")
    manifest.start_run("pull")
    manifest.close()
    before = snapshot(real)
    proc = demo(real)
    assert proc.returncode == 2, proc.stderr
    assert "not empty and was not made by `syncer demo`" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(real) == before


def test_a_file_alone_is_enough_to_refuse(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    proc = demo(tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_empty_folder_then_the_same_demo_folder_again_work(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    first = demo(work)
    assert first.returncode == 0, first.stderr[-2000:]
    marker = work / ".syncer-demo"
    assert marker.is_file() and stat.S_IMODE(marker.stat().st_mode) == 0o600
    again = demo(work)  # a folder the demo made may be reused: it starts over
    assert again.returncode == 0, again.stderr[-2000:] + again.stdout
    assert "MISMATCH" not in again.stdout
