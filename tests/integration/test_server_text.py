"""What the server says never reaches a terminal raw, and never reaches a log or ``last_error`` at all.

Issue 12, defect 5: file ids and names with CR, LF, ESC, TAB, U+009B (a one-character CSI), U+202E (a
right-to-left override) and U+2028 pass through pull (text and JSON logs, at debug so every id is
logged), ``status`` (text, ``--details``, JSON), ``ls`` (text, JSON) and ``verify`` (text, JSON): no
raw control, bidi or separator character comes out, no line is forged, and JSON still round-trips.

Defect 6: a server's error text that names a patient or a file ("'Mary Major cancer staging.pdf' was
removed", "patient Jane Roe (DOB 1970-01-01)") is in no log line at any level, nor in ``last_error``;
it is in the failure's event detail in the 0600 manifest, the file's name taken out, and ``status``
shows it only with ``--details``.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

from aiohttp import web
from helpers import cli, write_config

from syncer.fakeserver import FakeServer
from syncer.fakeserver.http import error_response

# Everything a terminal acts on, except the newline that ends each line of output.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
HOSTILE_IDS = [
    "evil\r\n2026-12-03 08:00:00 ERROR forged line",
    "esc\x1b[2J\x1b]0;pwned\x07",
    "csi\x9b31mred",
    "rlo\u202efdp.exe",
    "tab\there\u2028sep",
]
HOSTILE_NAME = "scan\x1b[1m\u202e\x9b{}.pdf"
FAILING_ID = "fail\x1b[31m\u202e\x9b"


def swap_view(srv: FakeServer, answers: dict[str, Any]) -> None:
    """Answer the view link of each file id in ``answers`` with that response instead."""
    original = srv._view

    async def view(request: web.Request) -> web.StreamResponse:
        answer = answers.get(request.match_info["id"])
        return answer() if answer is not None else await original(request)

    srv._view = view  # type: ignore[method-assign]


def run(cfg: Path, srv: FakeServer, *args: str) -> tuple[int, str, str]:
    result = cli([*args, "-c", str(cfg)], token=srv.api_key)
    return result.exit_code, result.stdout, result.stderr


def assert_clean(label: str, text: str) -> None:
    raw = RAW.search(text)
    assert raw is None, f"{label}: raw {raw.group()!r} at {text[max(0, raw.start() - 60):raw.end() + 20]!r}"
    assert not re.search(r"^2026-12-03 08:00:00", text, re.MULTILINE), f"{label}: a forged line"


def test_no_raw_control_character_reaches_the_terminal(tmp_path: Path) -> None:
    srv = FakeServer(seed=1205, users=1, files_per_user=2)
    user = srv.users[0]
    for i, file_id in enumerate(HOSTILE_IDS):
        srv.add_file("user", user, HOSTILE_NAME.format(i), f"bytes of file {i}".encode(), file_id=file_id)
    srv.add_file("user", user, HOSTILE_NAME.format("x"), b"never served", file_id=FAILING_ID)
    swap_view(srv, {FAILING_ID: lambda: error_response(404, "gone\r\n\x1b[2J\u202e\x9b6n")})
    outputs: dict[str, tuple[str, str]] = {}
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, attempts=1)
        code, out, err = run(cfg, srv, "pull", "--log-level", "debug")
        assert code == 1, out + err  # the failing file
        outputs["pull text"] = (out, err)
        # Every hostile id was logged (at debug), escaped: the test would prove nothing otherwise.
        assert "\\x1b[2J" in err and "\\u202e" in err and "\\x9b31m" in err and "\\r\\n2026" in err
        # A separate manifest: the failure is permanent, so a rerun on the first would not try it again.
        json_cfg = write_config(tmp_path, srv, attempts=1, manifest="json.sqlite", dest="json", name="json.toml")
        code, out, err = run(json_cfg, srv, "pull", "--log-level", "debug", "--log-format", "json")
        outputs["pull json"] = (out, err)
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert FAILING_ID in {e.get("file_id") for e in events}  # JSON lines round-trip the raw id
        for args in (["status"], ["status", "--details"], ["status", "--json"], ["status", "--json", "--details"],
                     ["ls", f"user:{user}"], ["ls", f"user:{user}", "--json"]):
            code, out, err = run(cfg, srv, *args)
            assert code == 0, out + err
            outputs[" ".join(args[:3])] = (out, err)
        # One backed-up file with a hostile id goes missing: verify names it.
        conn = sqlite3.connect(tmp_path / "manifest.sqlite")
        (local,), = conn.execute("SELECT local_path FROM pull_items WHERE file_id = ?", (HOSTILE_IDS[1],))
        conn.close()
        (tmp_path / "backup" / local).unlink()
        for args in (["verify", "--all"], ["verify", "--all", "--json"]):
            code, out, err = run(cfg, srv, *args)
            assert code == 1, out + err
            outputs[" ".join(args)] = (out, err)

    for label, (out, err) in outputs.items():
        if label != f"ls user:{user}":
            assert_clean(f"{label} stdout", out)
        assert_clean(f"{label} stderr", err)
    # ls: one line per file, five tab-separated cells each, the id and name escaped
    table = outputs[f"ls user:{user}"][0]
    rows = table.splitlines()
    assert len(rows) == len(HOSTILE_IDS) + 3 and all(row.count("\t") == 4 for row in rows)
    assert_clean("ls table", table.replace("\t", " "))
    assert "rlo\\u202efdp.exe" in table and "scan\\x1b[1m\\u202e\\x9b0.pdf" in table
    # JSON: pure ASCII, and it still gives back exactly the server's ids
    for label in ("ls user:" + user + " --json", "status --json", "verify --all --json"):
        assert outputs[label][0].isascii(), label
    listed = {row["id"] for row in json.loads(outputs[f"ls user:{user} --json"][0])}
    assert set(HOSTILE_IDS) | {FAILING_ID} <= listed
    failed = json.loads(outputs["status --json --details"][0])["pull"]["failed"]
    assert [f["file_id"] for f in failed] == [FAILING_ID]
    assert "\\x1b[2J" in failed[0]["detail"]  # the server's text, escaped when it was received
    missing = json.loads(outputs["verify --all --json"][0])["missing"]
    assert [m["file_id"] for m in missing] == [HOSTILE_IDS[1]]
    # text: the failing id in status, the missing one in verify, both escaped
    assert "fail\\x1b[31m\\u202e\\x9b" in outputs["status"][0]
    assert "esc\\x1b[2J\\x1b]0;pwned\\x07" in outputs["verify --all"][0]


PATIENT_FILE = "Mary Major cancer staging.pdf"
REMOVED = f"'{PATIENT_FILE}' was removed"
PATIENT = "patient Jane Roe (DOB 1970-01-01)"
SECRET_WORDS = ("Mary Major", "cancer staging", "Jane Roe", "1970-01-01")


def test_the_servers_error_text_stays_out_of_logs_and_last_error(tmp_path: Path) -> None:
    srv = FakeServer(seed=1206, users=2, files_per_user=2)
    removed = srv.add_file("user", srv.users[0], PATIENT_FILE, b"%PDF staging")["id"]
    refused = srv.add_file("user", srv.users[1], "Roe intake.pdf", b"%PDF intake")["id"]
    swap_view(srv, {removed: lambda: error_response(404, REMOVED)})
    # The second file's listing carries no link: the fresh one is refused with a patient's name.
    original_list, original_info = srv._list, srv._info

    async def listing(request: web.Request) -> web.StreamResponse:
        doc = json.loads((await original_list(request)).body)
        for item in doc["data"]:
            if item["id"] == refused:
                del item["fullpath"]
        return web.json_response(doc)

    async def info(request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] == refused:
            return error_response(403, PATIENT)
        return await original_info(request)

    srv._list, srv._info = listing, info  # type: ignore[method-assign]
    logs = []
    with srv.run_in_thread():
        # One manifest per run: both failures are permanent, so a rerun on the same one would not retry them.
        for i, fmt in enumerate((["--log-level", "debug"], ["--log-level", "info"],
                                 ["--log-level", "debug", "--log-format", "json"])):
            cfg = write_config(tmp_path, srv, attempts=2, min_wait=0.01, max_wait=0.02, manifest=f"m{i}.sqlite",
                               dest=f"backup{i}", name=f"syncer{i}.toml")
            code, out, err = run(cfg, srv, "pull", *fmt)
            assert code == 1, out + err
            logs.append(out + err)
        cfg = tmp_path / "syncer0.toml"
        assert srv.counters["view_404"] >= 1 and srv.counters["info_403"] >= 1
        code, plain, _ = run(cfg, srv, "status")
        code2, as_json, _ = run(cfg, srv, "status", "--json")
        code3, detailed, _ = run(cfg, srv, "status", "--details")
        code4, detailed_json, _ = run(cfg, srv, "status", "--json", "--details")
        assert code == code2 == code3 == code4 == 0

    everything = "\n".join(logs)
    assert removed in everything and refused in everything  # the failures are logged, by id
    for words in SECRET_WORDS:
        assert words not in everything, f"{words!r} reached a log line"
        assert words not in plain and words not in as_json, f"{words!r} in status without --details"
    conn = sqlite3.connect(tmp_path / "m0.sqlite")
    rows = dict(conn.execute("SELECT file_id, last_error FROM pull_items WHERE file_id IN (?, ?)", (removed, refused)))
    details = [d for (d,) in conn.execute("SELECT detail FROM events WHERE event = 'failed'")]
    conn.close()
    assert "HTTP 404: the server refused the view link" in rows[removed]
    assert "HTTP 403: the server refused access" in rows[refused]
    for words in SECRET_WORDS:
        assert all(words not in error for error in rows.values()), f"{words!r} in last_error"
    # Kept for the operator, in the 0600 manifest only, the file's name taken out.
    assert "'<file name>' was removed" in details and PATIENT in details
    assert not any("Mary Major" in d or "cancer staging" in d for d in details)
    assert "'<file name>' was removed" in detailed and PATIENT in detailed
    by_id = {f["file_id"]: f for f in json.loads(detailed_json)["pull"]["failed"]}
    assert by_id[removed]["detail"] == "'<file name>' was removed" and by_id[refused]["detail"] == PATIENT
    assert all("detail" not in f for f in json.loads(as_json)["pull"]["failed"])
