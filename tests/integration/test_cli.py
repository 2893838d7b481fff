"""The command line as an operator meets it: help, version, config and token errors, dry run, ls, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from helpers import NO_SERVER, cli, write_config

from syncer import __version__
from syncer.cli import main
from syncer.fakeserver import FakeServer, Faults


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    srv = FakeServer(seed=7, users=2, files_per_user=3, visits=1, files_per_visit=2)
    with srv.run_in_thread():
        yield srv


# -- help and version ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_help_has_a_description_and_an_example(name: str) -> None:
    command = main.commands[name]
    result = cli([name, "--help"])
    assert result.exit_code == 0, result.output
    description = " ".join((command.help or "").split("\n\n")[0].split())
    assert description, f"`syncer {name}` has no description"
    assert description in " ".join(result.output.split())
    assert "Example" in result.output, f"`syncer {name} --help` shows no example"
    assert f"syncer {name}" in result.output.split("Example", 1)[1]


def test_group_help_lists_commands_and_examples() -> None:
    result = cli(["--help"])
    assert result.exit_code == 0
    assert "Example" in result.output
    for name in main.commands:
        assert name in result.output
    assert isinstance(main, click.Group) and {"pull", "ls", "status", "verify"} <= set(main.commands)


def test_version() -> None:
    result = cli(["--version"])
    assert result.exit_code == 0 and __version__ in result.output and "syncer" in result.output


def test_python_dash_m_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "syncer", "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert __version__ in proc.stdout


# -- configuration and token errors ----------------------------------------------------------------
def test_unknown_key_is_exit_2_naming_the_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, **NO_SERVER, targets=["user:1"], extra="concurency = 4\n")
    for command in (["pull"], ["status"], ["verify"], ["ls", "user:1"]):
        result = cli([*command, "-c", str(cfg)], token="x")
        assert result.exit_code == 2, (command, result.output)
        assert "unknown key pull.concurency" in result.output
        assert "Traceback" not in result.output


def test_unknown_section_is_exit_2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, **NO_SERVER, targets=["user:1"], extra="[pulll]\ndest = 'x'\n")
    result = cli(["pull", "-c", str(cfg)], token="x")
    assert result.exit_code == 2 and "unknown section [pulll]" in result.output


def test_malformed_toml_is_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "syncer.toml"
    cfg.write_text('[api]\nbase_url = "http://127.0.0.1:9\n', encoding="utf-8")
    result = cli(["pull", "-c", str(cfg)], token="x")
    assert result.exit_code == 2
    assert "not valid TOML" in result.output and str(cfg) in result.output


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    result = cli(["status", "-c", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_missing_token_is_exit_2_naming_the_variable(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, **NO_SERVER, targets=["user:1"])
    result = cli(["pull", "-c", str(cfg)], token=None)
    assert result.exit_code == 2 and "VSEE_API_TOKEN" in result.output
    assert not (tmp_path / "manifest.sqlite").exists() and not (tmp_path / "backup").exists()
    custom = write_config(tmp_path, **NO_SERVER, targets=["user:1"])
    custom.write_text(custom.read_text(encoding="utf-8").replace(
        "[manifest]", 'token_env = "CLINIC_KEY"\n[manifest]'), encoding="utf-8")
    result = CliRunner().invoke(main, ["ls", "user:1", "-c", str(custom)],
                                env={"CLINIC_KEY": None, "VSEE_API_TOKEN": "set-but-not-the-one"})
    assert result.exit_code == 2 and "CLINIC_KEY" in result.output


# -- pull --dry-run ----------------------------------------------------------------------------------
def test_pull_dry_run_prints_counts_and_writes_nothing(server: FakeServer, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, server)
    result = cli(["pull", "-c", str(cfg), "--dry-run"], token=server.api_key)
    assert result.exit_code == 0, result.output
    files = server.files()
    for target in [("user", u) for u in server.users] + [("visit", v) for v in server.visits]:
        n = sum(1 for f in files if (f["target_type"], f["target_id"]) == target)
        assert f"{target[0]}:{target[1]}\t{n} files\t" in result.stdout
    assert f"total: {len(files)} files" in result.stdout and "dry run: nothing written" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syncer.toml"]  # no backup, manifest or lock


# -- ls ------------------------------------------------------------------------------------------------
def test_ls_table_and_json_never_show_a_link(server: FakeServer, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, server)
    user = server.users[0]
    mine = {f["id"]: f for f in server.files() if f["target_type"] == "user" and f["target_id"] == user}
    table = cli(["ls", f"user:{user}", "-c", str(cfg)], token=server.api_key)
    assert table.exit_code == 0, table.output
    rows = [ln.split("\t") for ln in table.stdout.splitlines()]
    assert {r[0] for r in rows} == set(mine)
    assert all(int(r[1]) == mine[r[0]]["size"] for r in rows)
    assert f"{len(mine)} files" in table.stderr
    as_json = cli(["ls", f"user:{user}", "-c", str(cfg), "--json"], token=server.api_key)
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.stdout)
    assert {r["id"] for r in doc} == set(mine)
    for out in (table.output, as_json.output):
        assert "auth_code" not in out and "fullpath" not in out and "/view" not in out
        assert server.api_key not in out


def test_ls_bad_target_is_exit_2(server: FakeServer, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, server)
    result = cli(["ls", "patient:1", "-c", str(cfg)], token=server.api_key)
    assert result.exit_code == 2 and "patient:1" in result.output


# -- output that is not a terminal ---------------------------------------------------------------------
def test_pull_output_off_a_terminal_has_no_control_characters(tmp_path: Path) -> None:
    srv = FakeServer(seed=8, users=2, files_per_user=4, hostile_names=True, faults=Faults(latency_ms=100))
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv)
        env = {k: v for k, v in os.environ.items() if k not in ("SYNCER_CONFIG", "FORCE_COLOR", "TERM")}
        env["VSEE_API_TOKEN"] = srv.api_key
        proc = subprocess.run(
            [sys.executable, "-m", "syncer", "pull", "-c", str(cfg), "--concurrency", "2",
             "--progress-interval", "0.05", "--log-level", "debug"],
            capture_output=True, env=env, timeout=120, check=False, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        status = subprocess.run([sys.executable, "-m", "syncer", "status", "-c", str(cfg)],
                                capture_output=True, env=env, timeout=60, check=False)
        assert status.returncode == 0
    out = proc.stdout + proc.stderr + status.stdout + status.stderr
    assert b"pull: " in proc.stderr, "expected at least one plain progress line"
    assert b"pull ok:" in proc.stdout
    assert b"\r" not in out and b"\x1b" not in out
    assert srv.api_key.encode() not in out and b"auth_code=" not in out.replace(b"auth_code=<redacted>", b"")
