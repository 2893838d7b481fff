"""`syncer fake-server`: serves on 127.0.0.1, prints what a rehearsal needs (a push's tokens file too), stops
on SIGTERM, and refuses bad input with a message and exit 2, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import write_config

from syncer.inputs.tokens import load_tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_server_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "syncer", "fake-server", *args]


@contextmanager
def fake_server(*args: str, cwd: Path | None = None) -> Iterator[dict[str, str]]:
    """``syncer fake-server ARGS`` as a process: yields its printed lines by their first word (``api`` for
    the key line), and stops it with SIGTERM, which must end it cleanly."""
    proc = subprocess.Popen(fake_server_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd)
    watchdog = threading.Timer(60, proc.kill)  # a server that never prints its lines must not hang the suite
    watchdog.start()
    try:
        lines: dict[str, str] = {}
        while "tokens" not in lines:
            line = proc.stdout.readline()
            assert line, f"fake-server ended early: {proc.stderr.read()}"
            key, _, value = line.strip().partition(" ")
            lines[key] = value.strip()
        yield lines
    finally:
        watchdog.cancel()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err


def tokens_path(lines: dict[str, str]) -> Path:
    return Path(lines["tokens"].removeprefix("file").split()[0])


def test_fake_server_command_serves_and_stops() -> None:
    port = free_port()
    with fake_server("--port", str(port), "--seed-users", "2", "--fault", "latency_ms=1") as lines:
        base_url = lines["base_url"]
        assert base_url == f"http://127.0.0.1:{port}/clinic/api_v3"
        api_key = lines["api"].split()[1]
        user = lines["targets"].split()[0].split(":")[1]
        req = urllib.request.Request(f"{base_url}/files?target_type=user&target_id={user}",
                                     headers={"X-ApiToken": api_key})
        with urllib.request.urlopen(req, timeout=10) as resp:
            files = json.loads(resp.read())["data"]
        assert files and all("fullpath" in f for f in files)
        # By default the tokens file is in a private temporary folder of its own ...
        tokens = tokens_path(lines)
        assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
        assert stat.S_IMODE(tokens.parent.stat().st_mode) == 0o700
        assert sorted(load_tokens(tokens)) == sorted(t.split(":")[1] for t in lines["targets"].split()
                                                     if t.startswith("user:"))
    assert not tokens.parent.exists(), "... removed when the server stops"


def test_a_push_can_be_rehearsed_with_the_printed_tokens_file(tmp_path: Path) -> None:
    with fake_server("--port", "0", "--seed-users", "2", "--tokens-file", str(tmp_path / "tokens.csv"),
                     "--plain-names") as lines:
        tokens = tokens_path(lines)
        assert tokens == tmp_path / "tokens.csv" and stat.S_IMODE(tokens.stat().st_mode) == 0o600
        users = list(load_tokens(tokens))
        assert len(users) == 2
        for user in users:
            (tmp_path / "src" / user).mkdir(parents=True)
            (tmp_path / "src" / user / "referral.txt").write_text(f"for {user}\n")
        cfg = write_config(tmp_path, base_url=lines["base_url"], account_code=lines["account_code"], targets=[],
                           push_source="src", push_tokens="tokens.csv")
        env = dict(os.environ, VSEE_API_TOKEN=lines["api"].split()[1])
        env.pop("SYNCER_CONFIG", None)
        push = subprocess.run([sys.executable, "-m", "syncer", "push", "-c", str(cfg), "-q"], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert push.returncode == 0, push.stderr
        for user in users:  # each document is on the server, under its patient
            req = urllib.request.Request(f"{lines['base_url']}/files?target_type=user&target_id={user}",
                                         headers={"X-ApiToken": lines["api"].split()[1]})
            with urllib.request.urlopen(req, timeout=10) as resp:
                names = [f["name"] for f in json.loads(resp.read())["data"]]
            assert "referral.txt" in names, names
    assert tokens.exists(), "a tokens file the operator named is theirs to keep"


def usage_error(*args: str, cwd: Path | None = None) -> str:
    """Run ``syncer fake-server ARGS``, expect exit 2 with a message and no traceback; return stderr."""
    proc = subprocess.run(fake_server_cmd(*args), capture_output=True, text=True, timeout=20, cwd=cwd)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
    return proc.stderr


def test_an_existing_tokens_file_is_not_overwritten(tmp_path: Path) -> None:
    mine = tmp_path / "tokens.csv"
    mine.write_text("user_id,token\n42,real-token-of-someone\n")
    err = usage_error("--port", "0", "--tokens-file", str(mine))
    assert "exists" in err and "never overwrites" in err
    assert mine.read_text() == "user_id,token\n42,real-token-of-someone\n"


def test_a_tokens_file_in_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    err = usage_error("--port", "0", "--tokens-file", str(tmp_path / "no" / "such" / "tokens.csv"))
    assert "cannot write the tokens file" in err


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = usage_error("--port", str(port))
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in err


@pytest.mark.parametrize(("args", "words"), [
    (["--fault", "nonsense=1"], "NAME=RATE"),
    (["--fault", "error_500=7"], "error_500=7.0: a rate must be between 0 and 1"),
    (["--fault", "reset_mid_body=-0.1"], "a rate must be between 0 and 1"),
    (["--fault", "error_500=nan"], "a rate must be between 0 and 1"),
    (["--fault", "latency_ms=-5"], "latency_ms=-5.0: must be a number >= 0"),
    (["--latency-ms", "nan"], "latency_ms=nan: must be a number >= 0"),
    (["--link-ttl", "nan"], "--link-ttl"),
    (["--seed-users", "-5"], "'--seed-users': -5 is not in the range x>=0"),
    (["--files-per-visit", "-1"], "--files-per-visit"),
    (["--port", "70000"], "--port"),
])
def test_bad_values_are_refused_with_a_message(args: list[str], words: str) -> None:
    assert words in usage_error(*args)
