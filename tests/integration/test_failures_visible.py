"""Failures that stay visible (issue 12, defects 1, 3, 4 and the include_shared part of 12), through the CLI
against the built-in server: acknowledging a permanent failure, mistyped target ids, targets that list
nothing or cannot be listed, the metrics of what is left failed, and narrower selections that are not
deletions."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import cli, write_config

from syncer.fakeserver import FakeServer
from syncer.fakeserver.http import error_response

A, B = "1001", "1002"


def _server(seed: int = 1210) -> FakeServer:
    srv = FakeServer(seed=seed)
    for user, names in ((A, ("intake-scan.pdf", "consent-form.pdf")), (B, ("lab-report.pdf",))):
        for name in names:
            srv.add_file("user", user, name, hashlib.sha256(f"{user}/{name}".encode()).digest() * 100)
    return srv


def pull(cfg: Path, srv: FakeServer, *args: str) -> tuple[int, str, str]:
    metrics = cfg.parent / "syncer.prom"
    metrics.unlink(missing_ok=True)
    res = cli(["pull", "-c", str(cfg), "-q", "--metrics-file", str(metrics), *args], token=srv.api_key)
    return res.exit_code, res.output, metrics.read_text() if metrics.exists() else ""


def status(cfg: Path) -> tuple[str, dict[str, Any]]:
    text, doc = cli(["status", "-c", str(cfg)]), cli(["status", "-c", str(cfg), "--json"])
    assert text.exit_code == 0 == doc.exit_code, text.output + doc.output
    return text.output, json.loads(doc.output)


def rows(cfg: Path) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(cfg.parent / "manifest.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return {r["file_id"]: dict(r) for r in conn.execute("SELECT * FROM pull_items")}
    finally:
        conn.close()


def gauge(metrics: str, name: str, **labels: str) -> str | None:
    want = ",".join(['kind="pull"'] + [f'{k}="{v}"' for k, v in labels.items()])
    m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", metrics, re.M)
    return m[1] if m else None


def serve_404(srv: FakeServer, file_id: str) -> None:
    orig = srv._view

    async def view(request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] == file_id:
            return error_response(404, "file not found")
        return await orig(request)

    srv._view = view  # type: ignore[method-assign]


# -- 1 (b, c): a permanent failure stays red until an operator acknowledges it --------------------------------

def test_a_permanent_failure_is_red_every_run_until_acknowledged_and_status_keeps_listing_it(tmp_path: Path) -> None:
    srv = _server()
    with srv.run_in_thread():
        victim = sorted(f["id"] for f in srv.files() if f["target_id"] == A)[0]
        serve_404(srv, victim)
        cfg = write_config(tmp_path, srv, targets=[f"user:{A}", f"user:{B}"])
        for _ in range(2):  # every run, not only the one that first saw it
            code, out, metrics = pull(cfg, srv)
            assert code == 1 and "1 failed permanently" in out, out
            assert gauge(metrics, "syncer_last_run_success") == "0"
            assert gauge(metrics, "syncer_items_failed", reason="NotFoundError") == "1", metrics
        assert "2 already up to date" in out  # the two files really backed up, not the failed one

        res = cli(["ack", "pull", "-c", str(cfg), f"user:{A}", victim, "--reason", "removed by the clinic",
                   "--by", "alice"])
        assert res.exit_code == 0 and "acknowledged 1 permanent failure" in res.output, res.output
        code, out, metrics = pull(cfg, srv)
        assert code == 0, out
        assert "0 failed permanently" in out and "1 failed permanently again, acknowledged" in out, out
        assert gauge(metrics, "syncer_last_run_success") == "1"
        assert gauge(metrics, "syncer_files_acknowledged") == "1"
        text, st = status(cfg)
        assert victim in text and "acknowledged by alice" in text, text
        item = next(i for i in st["pull"]["failed"] if i["file_id"] == victim)
        assert (item["state"], item["acked_by"], item["ack_reason"]) == ("permanent", "alice", "removed by the clinic")
        assert st["pull"]["acknowledged"]["count"] == 1
        conn = sqlite3.connect(tmp_path / "manifest.sqlite")
        events = conn.execute("SELECT at, detail FROM events WHERE event = 'acknowledged'").fetchall()
        conn.close()
        assert len(events) == 1 and events[0][1] == "by alice: removed by the clinic" and events[0][0]

        # The file changes on the server: the acknowledgement was for the old one, so it is void.
        srv._files[victim].size += 1
        code, out, _ = pull(cfg, srv)
        assert code == 1 and "1 failed permanently" in out, out
        assert rows(cfg)[victim]["acked_at"] is None


def test_only_a_permanent_failure_can_be_acknowledged(tmp_path: Path) -> None:
    srv = _server(1211)
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, targets=[f"user:{A}"])
        assert pull(cfg, srv)[0] == 0
        done = sorted(rows(cfg))[0]
        for args, words in (([done], "is done, not failed permanently"),
                            (["no-such-file"], "has no file 'no-such-file'")):
            res = cli(["ack", "pull", "-c", str(cfg), f"user:{A}", *args, "--reason", "x"])
            assert res.exit_code == 2 and words in res.output, res.output
        res = cli(["ack", "pull", "-c", str(cfg), f"user:{A}", "--reason", "x"])
        assert res.exit_code == 2 and "--all" in res.output
        # --all on a target the manifest never saw: a mistyped id, not "acknowledged 0".
        res = cli(["ack", "pull", "-c", str(cfg), f"user:{A}9", "--all", "--reason", "x"])
        assert res.exit_code == 2 and f"user:{A}9 has no files in the manifest" in res.output, res.output
        res = cli(["ack", "push", "-c", str(cfg), "999", "--all", "--reason", "x"])
        assert res.exit_code == 2 and "user 999 has no files in the manifest" in res.output, res.output
        res = cli(["ack", "pull", "-c", str(cfg), f"user:{A}", "--all", "--reason", "x"])
        assert res.exit_code == 0 and "acknowledged 0" in res.output, res.output  # known, nothing to ack
        assert all(r["acked_at"] is None for r in rows(cfg).values())


# -- 3: mistyped ids, and targets that list nothing -------------------------------------------------------------

@pytest.mark.parametrize(("line", "words"), [
    ("user:{'id': 1002}", "('{')"), ('user:"1002"', "('\"')"), ("user:10 02", "(' ')"), ("visit:[7]", "('[')"),
    ("user:1002;", "(';')"), ("user:1002\x1b[2J", "cannot have"), ("user:10\u202e02", "cannot have"),
])
def test_an_id_with_characters_no_id_has_is_exit_2_naming_the_line(tmp_path: Path, line: str, words: str) -> None:
    srv = _server(1212)
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, targets=[])
        targets = tmp_path / "targets.txt"
        targets.write_text(f"# tonight\nuser:{A}\n{line}\n", encoding="utf-8")
        code, out, _ = pull(cfg, srv, "--targets-file", str(targets))
        assert code == 2, out
        assert f"{targets}:3:" in out and words in out, out
        assert srv.counters["list"] == 0  # nothing was attempted
        res = cli(["pull", "-c", str(cfg), "--target", line], token=srv.api_key)
        assert res.exit_code == 2 and words in res.output, res.output


def test_targets_that_list_no_files_are_reported_in_the_summary_and_status(tmp_path: Path) -> None:
    srv = _server(1213)
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, targets=[f"user:{A}", "user:9991", "user:9992"])
        code, out, metrics = pull(cfg, srv)
        assert code == 0, out  # reported, not a failure: a new patient may have no files yet
        assert "2 targets listed no files" in out, out
        assert gauge(metrics, "syncer_targets_empty") == "2"
        text, st = status(cfg)
        assert "pull targets that listed no files (2):" in text and "user:9991" in text and "user:9992" in text, text
        assert sorted((f["scope_id"], f["reason"]) for f in st["scope_failures"]) == [
            ("user:9991", "listed_nothing"), ("user:9992", "listed_nothing")]
        srv.add_file("user", "9991", "first-visit.pdf", b"%PDF-1.4 hello")
        code, out, _ = pull(cfg, srv)
        assert code == 0 and "1 target listed no files" in out, out
        assert [f["scope_id"] for f in status(cfg)[1]["scope_failures"]] == ["user:9992"]


# -- 4: a target that cannot be listed is in status (text and JSON) while it fails ------------------------------

@pytest.mark.parametrize(("answer", "reason", "error"), [
    ("garbage", "list_failed", "ProtocolError"),
    ("404", "not_found", "NotFoundError"),
    ("403", "list_failed", "ForbiddenError"),
])
def test_a_target_whose_listing_fails_is_red_and_in_status_until_it_lists(
        tmp_path: Path, answer: str, reason: str, error: str) -> None:
    srv = _server(1214)
    orig = srv._list
    broken = {"on": True}

    async def listing(request: web.Request) -> web.StreamResponse:
        if broken["on"] and request.query.get("target_id") == B:
            if answer == "garbage":
                return web.Response(body=b'{"data": [{"id": "62ce03', content_type="application/json")
            return error_response(int(answer), "patient Jane Roe: no access")
        return await orig(request)

    srv._list = listing  # type: ignore[method-assign]
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, targets=[f"user:{A}", f"user:{B}"], attempts=1)
        for _ in range(2):
            code, out, metrics = pull(cfg, srv)
            assert code == 1, out
            assert "1 target could not be listed" in out, out
            assert gauge(metrics, "syncer_targets_failed") == "1" and gauge(metrics, "syncer_last_run_success") == "0"
            text, st = status(cfg)
            assert f"user:{B}" in text and error in text, text
            [failure] = st["scope_failures"]
            assert (failure["kind"], failure["scope"], failure["scope_id"], failure["reason"], failure["error_class"]) \
                == ("pull", "target", f"user:{B}", reason, error)
            assert failure["detail"]  # syncer's own words: the server's text (here a name) stays out of status
            assert "Jane Roe" not in text and "Jane Roe" not in json.dumps(st)
        first_seen = failure["first_seen"]
        assert failure["last_seen"] > first_seen
        broken["on"] = False
        code, out, _ = pull(cfg, srv)
        assert code == 0, out
        assert status(cfg)[1]["scope_failures"] == []
        conn = sqlite3.connect(tmp_path / "manifest.sqlite")
        trail = [e for (e,) in conn.execute("SELECT event FROM events WHERE item = ? ORDER BY id",
                                            (f"target/user:{B}",))]
        conn.close()
        assert trail == [f"target_{reason}", f"target_{reason}", "target_cleared"]


# -- 12: a narrower selection is not a deletion -----------------------------------------------------------------

def test_a_pull_without_include_shared_does_not_mark_shared_documents_deleted(tmp_path: Path) -> None:
    srv = _server(1215)
    with srv.run_in_thread():
        shared = srv.add_file("user", A, "referral.pdf", b"%PDF referral" * 50)["id"]
        srv.share_file(shared, B)
        own = srv.add_file("user", B, "notes.pdf", b"%PDF notes" * 50)["id"]
        cfg = write_config(tmp_path, srv, targets=[f"user:{B}"])
        assert pull(cfg, srv, "--include-shared")[0] == 0
        assert rows(cfg)[shared]["state"] == "done"
        code, out, _ = pull(cfg, srv)
        assert code == 0, out
        assert rows(cfg)[shared]["state"] == "done"  # not asked for is not deleted
        # A real deletion of the user's own file is still seen without include_shared...
        srv.delete_file(own)
        assert pull(cfg, srv)[0] == 0
        assert rows(cfg)[own]["state"] == "remote_deleted"
        # ...and of the shared one by a listing that covers it.
        srv.delete_file(shared)
        assert pull(cfg, srv)[0] == 0 and rows(cfg)[shared]["state"] == "done"
        assert pull(cfg, srv, "--include-shared")[0] == 0 and rows(cfg)[shared]["state"] == "remote_deleted"


def test_a_pull_of_fewer_categories_does_not_mark_the_others_deleted(tmp_path: Path) -> None:
    srv = _server(1216)
    with srv.run_in_thread():
        consent = srv.add_file("user", A, "consent.pdf", b"%PDF consent" * 40, category="user_consent")["id"]
        cfg = write_config(tmp_path, srv, targets=[f"user:{A}"])
        assert pull(cfg, srv)[0] == 0
        assert pull(cfg, srv, "--category", "user_consent")[0] == 0
        assert pull(cfg, srv, "--category", "user_document", "--category", "user_avatar")[0] == 0
        states = {fid: r["state"] for fid, r in rows(cfg).items()}
        assert set(states.values()) == {"done"} and consent in states


def test_a_dry_run_that_could_not_list_a_target_says_so_and_exits_1(tmp_path) -> None:
    # The dry run's total would leave out the files of a target nobody could list: never a quiet 0.
    from helpers import cli, write_config

    from syncer.fakeserver import FakeServer

    srv = FakeServer(seed=3, users=2, files_per_user=2, visits=0)
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, attempts=1, min_wait=0.01, max_wait=0.02)
        ok = cli(["pull", "-c", str(cfg), "--dry-run"], token=srv.api_key)
        assert ok.exit_code == 0, ok.output
        srv.set_faults(garbage_json=1.0)  # every listing answers 200 with a body that is not JSON
        bad = cli(["pull", "-c", str(cfg), "--dry-run"], token=srv.api_key)
        assert bad.exit_code == 1 and "2 targets could not be listed" in bad.output, bad.output
