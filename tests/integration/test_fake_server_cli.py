"""`syncer fake-server`: serves on 127.0.0.1, prints what a rehearsal needs, stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fake_server_command_serves_and_stops():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "syncer", "fake-server", "--port", str(port), "--seed-users", "2",
                             "--fault", "latency_ms=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = {}
        for _ in range(4):
            key, _, value = proc.stdout.readline().strip().partition(" ")
            lines[key] = value.strip()
        base_url = lines["base_url"]
        assert base_url == f"http://127.0.0.1:{port}/clinic/api_v3"
        api_key = lines["api"].split()[1]
        user = lines["targets"].split()[0].split(":")[1]
        req = urllib.request.Request(f"{base_url}/files?target_type=user&target_id={user}",
                                     headers={"X-ApiToken": api_key})
        with urllib.request.urlopen(req, timeout=10) as resp:
            files = json.loads(resp.read())["data"]
        assert files and all("fullpath" in f for f in files)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert proc.returncode in (0, -signal.SIGTERM)


def test_fake_server_rejects_an_unknown_fault():
    proc = subprocess.run([sys.executable, "-m", "syncer", "fake-server", "--fault", "nonsense=1"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "NAME=RATE" in proc.stderr
