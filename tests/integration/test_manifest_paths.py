"""Where the manifest is, and reading it without writing: defect 9 and the smaller items of issue 12.

- The default manifest sits beside the config file (not in the working directory); ``--manifest`` >
  ``$SYNCER_MANIFEST`` > ``manifest.path`` > the default.
- ``status`` and ``verify`` work on a manifest in a read-only folder and leave no ``-wal``/``-shm``.
- A manifest path that is a folder, a nan/inf/negative ``--progress-interval``: exit 2, nothing written.
- A config file with a UTF-8 byte order mark is read; an empty 0644 manifest file becomes 0600 when filled.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from helpers import write_config

from syncer.cli import main
from syncer.fakeserver import FakeServer


def run(args: list[str], *, token: str | None = None, manifest_env: str | None = None) -> Result:
    env = {"VSEE_API_TOKEN": token, "SYNCER_CONFIG": None, "SYNCER_MANIFEST": manifest_env}
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def bare_config(folder: Path, srv: FakeServer, extra: str = "") -> Path:
    """A config with no [manifest] section: the default manifest path applies."""
    folder.mkdir(parents=True, exist_ok=True)
    targets = json.dumps([f"user:{u}" for u in srv.users])
    path = folder / "syncer.toml"
    path.write_text(f'[api]\nbase_url = "{srv.base_url}"\naccount_code = "{srv.account_code}"\n'
                    f'[pull]\ndest = "backup"\ntargets = {targets}\n{extra}', encoding="utf-8")
    return path


def test_default_manifest_is_beside_the_config_and_status_finds_it_from_anywhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = FakeServer(seed=1, users=2, files_per_user=2, visits=0)
    with srv.run_in_thread():
        cfg = bare_config(tmp_path / "conf", srv)
        elsewhere = tmp_path / "cron-cwd"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        pulled = run(["pull", "-c", str(cfg), "-q"], token=srv.api_key)
        assert pulled.exit_code == 0, pulled.output
        assert (tmp_path / "conf" / "syncer-manifest.sqlite").is_file()
        assert not (elsewhere / "syncer-manifest.sqlite").exists()
        monkeypatch.chdir(tmp_path)
        status = run(["status", "-c", str(cfg), "--json"])
        assert status.exit_code == 0, status.output
        doc = json.loads(status.stdout)
        assert doc["pull"]["states"]["done"]["count"] == 4
        assert Path(doc["manifest"]).resolve() == (tmp_path / "conf" / "syncer-manifest.sqlite").resolve()


def test_manifest_flag_beats_env_beats_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = FakeServer(seed=2, users=1, files_per_user=2, visits=0)
    with srv.run_in_thread():
        cfg = bare_config(tmp_path, srv, extra='[manifest]\npath = "from-config.sqlite"\n')
        monkeypatch.chdir(tmp_path)
        # one shared config, one manifest per shard: the environment names it
        assert run(["pull", "-c", str(cfg), "-q"], token=srv.api_key, manifest_env="shard-0.sqlite").exit_code == 0
        assert (tmp_path / "shard-0.sqlite").is_file() and not (tmp_path / "from-config.sqlite").exists()
        # the flag wins over the environment
        assert run(["pull", "-c", str(cfg), "-q", "--manifest", "shard-1.sqlite"], token=srv.api_key,
                   manifest_env="shard-0.sqlite").exit_code == 0
        assert (tmp_path / "shard-1.sqlite").is_file()
        for name in ("shard-0.sqlite", "shard-1.sqlite"):
            doc = json.loads(run(["status", "-c", str(cfg), "--json", "--manifest", name]).stdout)
            assert doc["pull"]["states"]["done"]["count"] == 2 and len(doc["runs"]) == 1
        assert run(["verify", "-c", str(cfg), "--all", "--manifest", "shard-1.sqlite"]).exit_code == 0
        # without flag or env, the config's manifest.path: nothing ran with it
        missing = run(["status", "-c", str(cfg)])
        assert missing.exit_code == 2 and "from-config.sqlite" in missing.output


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[None]:
    """``folder`` where nothing can be created, even by root (chattr +i), restored afterwards."""
    mode = stat.S_IMODE(folder.stat().st_mode)
    os.chmod(folder, 0o555)
    immutable = False
    if os.geteuid() == 0:
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        probe = folder / "probe"
        try:
            probe.write_bytes(b"")
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("cannot make a folder read-only here")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        os.chmod(folder, mode)


def test_status_and_verify_read_a_manifest_in_a_read_only_folder_and_write_nothing(tmp_path: Path) -> None:
    srv = FakeServer(seed=3, users=2, files_per_user=2, visits=0)
    with srv.run_in_thread():
        cfg = bare_config(tmp_path / "conf", srv, extra='[manifest]\npath = "syncer-manifest.sqlite"\n')
        assert run(["pull", "-c", str(cfg), "-q"], token=srv.api_key).exit_code == 0
    folder = tmp_path / "conf"
    before = sorted(p.name for p in folder.iterdir())
    assert "syncer-manifest.sqlite" in before and "syncer-manifest.sqlite-wal" not in before
    with read_only_folder(folder):
        status = run(["status", "-c", str(cfg), "--json"])
        assert status.exit_code == 0, status.output
        assert json.loads(status.stdout)["pull"]["states"]["done"]["count"] == 4
        verify = run(["verify", "-c", str(cfg), "--all"])
        assert verify.exit_code == 0, verify.output
        assert sorted(p.name for p in folder.iterdir()) == before
    # in a writable folder the same commands leave it as it was too (mode=ro adds nothing a writer
    # would not, and the files SQLite may leave carry the manifest's 0600)
    assert run(["status", "-c", str(cfg)]).exit_code == 0
    for side in folder.glob("syncer-manifest.sqlite-*"):
        assert stat.S_IMODE(side.stat().st_mode) == 0o600


def test_a_manifest_path_that_is_a_folder_is_exit_2_with_no_lock_left(tmp_path: Path) -> None:
    srv = FakeServer(seed=4, users=1, files_per_user=1, visits=0)
    with srv.run_in_thread():
        cfg = bare_config(tmp_path, srv, extra='[manifest]\npath = "state"\n')
        (tmp_path / "state").mkdir()
        for args in (["pull", "-c", str(cfg)], ["status", "-c", str(cfg)], ["verify", "-c", str(cfg)]):
            result = run(args, token=srv.api_key)
            assert result.exit_code == 2, result.output
            assert "is a folder" in result.output and "must name a file" in result.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["state", "syncer.toml"]
        assert list((tmp_path / "state").iterdir()) == []
        assert sum(srv.counters.values()) == 0


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_a_progress_interval_that_is_not_a_positive_number_is_refused(tmp_path: Path, value: str) -> None:
    cfg = write_config(tmp_path, base_url="http://127.0.0.1:9", account_code="x", targets=["user:1"])
    result = run(["pull", "-c", str(cfg), "--progress-interval", value], token="a-test-token-long-enough")
    assert result.exit_code == 2, result.output
    assert "--progress-interval" in result.output
    assert not (tmp_path / "manifest.sqlite").exists()
    # the same in the file
    cfg.write_text(cfg.read_text(encoding="utf-8") + f"[log]\nprogress_interval = {value}\n", encoding="utf-8")
    result = run(["pull", "-c", str(cfg)], token="a-test-token-long-enough")
    assert result.exit_code == 2 and "progress_interval" in result.output, result.output


def test_a_config_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    srv = FakeServer(seed=5, users=1, files_per_user=2, visits=0)
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv)
        cfg.write_bytes(b"\xef\xbb\xbf" + cfg.read_bytes())
        result = run(["pull", "-c", str(cfg), "-q"], token=srv.api_key)
        assert result.exit_code == 0, result.output
        assert "pull ok: 2 files" in result.output


def test_an_empty_0644_manifest_file_is_made_0600_when_filled(tmp_path: Path) -> None:
    srv = FakeServer(seed=6, users=1, files_per_user=1, visits=0)
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv)
        manifest = tmp_path / "manifest.sqlite"
        manifest.touch()
        os.chmod(manifest, 0o644)
        assert run(["pull", "-c", str(cfg), "-q"], token=srv.api_key).exit_code == 0
        assert manifest.stat().st_size > 0
        assert stat.S_IMODE(manifest.stat().st_mode) == 0o600


def test_ack_and_restore_take_the_manifest_flag_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = FakeServer(seed=8, users=1, files_per_user=2, visits=0)
    with srv.run_in_thread():
        cfg = bare_config(tmp_path, srv, extra='[manifest]\npath = "from-config.sqlite"\n')
        monkeypatch.chdir(tmp_path)
        assert run(["pull", "-c", str(cfg), "-q", "--manifest", "other.sqlite"], token=srv.api_key).exit_code == 0
        target = f"user:{srv.users[0]}"
        ack = run(["ack", "pull", target, "no-such-file", "--reason", "test", "-c", str(cfg), "--manifest",
                   "other.sqlite"])
        assert ack.exit_code == 2 and "has no file 'no-such-file'" in ack.output, ack.output
        assert "no manifest at" in run(["ack", "pull", target, "x", "--reason", "t", "-c", str(cfg)]).output
        tokens = tmp_path / "tokens.csv"
        tokens.write_text(f"user_id,token\n{srv.users[0]},{srv.token_for(srv.users[0])}\n", encoding="utf-8")
        os.chmod(tokens, 0o600)
        dry = run(["restore", "-c", str(cfg), "--dry-run", "--manifest", "other.sqlite", "--tokens-file",
                   str(tokens)], token=srv.api_key)
        assert "no manifest" not in dry.output and "total: 1 users" in dry.output, dry.output
