"""push: a file the server refused for good (413) is not sent again, but stays red in every run until it
changes or an operator acknowledges it (issue 12: never green while a file is not migrated)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from helpers import cli, write_config

from syncer.fakeserver import FakeServer


def _setup(tmp_path: Path, srv: FakeServer) -> tuple[Path, str]:
    user = srv.users[0]
    (tmp_path / "src" / user).mkdir(parents=True)
    (tmp_path / "src" / user / "small note.txt").write_bytes(b"fits" * 100)
    (tmp_path / "src" / user / "big scan.pdf").write_bytes(os.urandom(50_000))
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(f"user_id,token\n{user},{srv.token_for(user)}\n")
    tokens.chmod(0o600)
    return write_config(tmp_path, srv, push_source="src"), user


def _push(cfg: Path, srv: FakeServer, metrics: Path) -> tuple[int, str, str]:
    res = cli(["push", "-c", str(cfg), "-q", "--metrics-file", str(metrics)], token=srv.api_key)
    return res.exit_code, res.output, metrics.read_text()


def test_a_refused_file_is_red_every_run_until_acknowledged(tmp_path: Path) -> None:
    srv = FakeServer(seed=5, users=1, files_per_user=0, visits=0, max_upload_bytes=10_000)
    with srv.run_in_thread():
        cfg, user = _setup(tmp_path, srv)
        metrics = tmp_path / "push.prom"
        for run in (1, 2):
            code, out, prom = _push(cfg, srv, metrics)
            assert code == 1, f"run {run}: {out}"
            assert re.search(r'^syncer_last_run_success\{kind="push"\} 0$', prom, re.M), prom
            assert re.search(r'^syncer_items_failed\{kind="push",reason="TooLargeError"\} 1$', prom, re.M), prom
        assert srv.counters["upload_413"] == 1, "the refused file is not sent again while unchanged"
        # Only a permanent failure can be acknowledged; the path is an argument, never echoed back.
        bad = cli(["ack", "push", user, "small note.txt", "--reason", "x", "-c", str(cfg)])
        assert bad.exit_code == 2 and "small note" not in bad.output, bad.output
        # status names the file by its short id, never by its name (patient data), unless --details.
        text = cli(["status", "-c", str(cfg)]).output
        doc = json.loads(cli(["status", "-c", str(cfg), "--json"]).output)
        assert "big scan" not in text and "big scan" not in json.dumps(doc), text
        (failed,) = doc["push"]["failed"]
        assert failed["item"] in text and "rel_path" not in failed
        assert "big scan.pdf" in cli(["status", "-c", str(cfg), "--details"]).output
        ok = cli(["ack", "push", user, failed["item"], "--reason", "over the size limit, kept on the NAS",
                  "--by", "dr.ops", "-c", str(cfg)])
        assert ok.exit_code == 0 and "acknowledged 1 permanent failure" in ok.output, ok.output
        code, out, prom = _push(cfg, srv, metrics)
        assert code == 0, out
        assert re.search(r'^syncer_last_run_success\{kind="push"\} 1$', prom, re.M), prom
        st = json.loads(cli(["status", "-c", str(cfg), "--json"]).output)
        (item,) = st["push"]["failed"]
        assert item["state"] == "permanent" and item["acked_by"] == "dr.ops", item
        assert st["push"]["acknowledged"]["count"] == 1
        # The file changes: the acknowledgement is void, it is sent again, refused again: red again.
        (tmp_path / "src" / user / "big scan.pdf").write_bytes(os.urandom(60_000))
        code, out, prom = _push(cfg, srv, metrics)
        assert code == 1, out
        assert srv.counters["upload_413"] == 2
        st = json.loads(cli(["status", "-c", str(cfg), "--json"]).output)
        assert st["push"]["failed"][0]["acked_at"] is None
