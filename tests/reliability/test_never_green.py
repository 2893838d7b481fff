"""Never green while a patient's file is missing (issue 12).

For each way a file can fail to be backed up, through the CLI against the built-in server: two runs in a
row with the cause in place, neither exits 0 nor writes ``syncer_last_run_success ... 1``, and after
each ``syncer status`` names what is missing (the file, or the target that could not be listed); once
the cause is fixed, the next run fetches the file and is green, and status is clean.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import cli, write_config

import syncer.local.storage as storage
import syncer.local.writer as writer
from syncer.fakeserver import FakeServer
from syncer.fakeserver.http import error_response

VICTIM, OTHER = "1001", "1002"


@dataclass
class World:
    """The server, the config, and what a case breaks."""

    srv: FakeServer
    tmp: Path
    cfg: Path
    monkeypatch: pytest.MonkeyPatch
    victims: set[str] = field(default_factory=set)   # file ids that must not be backed up while broken
    named: set[str] = field(default_factory=set)     # what status must name (file ids or targets)
    undo: list[Callable[[], None]] = field(default_factory=list)

    @property
    def dest(self) -> Path:
        return self.tmp / "backup"

    def files_of(self, user: str) -> list[str]:
        return sorted(f["id"] for f in self.srv.files() if f["target_id"] == user)

    def one_victim(self) -> str:
        fid = self.files_of(VICTIM)[0]
        self.victims, self.named = {fid}, {fid}
        return fid

    def replace_handler(self, name: str, fn: Callable[..., Any]) -> None:
        """Script the server's answer (``_view``, ``_list``, ``_info``) until ``fix``."""
        orig = getattr(self.srv, name)
        self.undo.append(lambda: setattr(self.srv, name, orig))
        setattr(self.srv, name, fn)


def _server() -> FakeServer:
    srv = FakeServer(seed=1201)
    for user, names in ((VICTIM, ("intake-scan.pdf", "consent-form.pdf")), (OTHER, ("lab-report.pdf",))):
        for name in names:
            srv.add_file("user", user, name, hashlib.sha256(f"{user}/{name}".encode()).digest() * 200)
    return srv


# -- the causes -------------------------------------------------------------------------------------------

def view_404(w: World) -> None:
    fid = w.one_victim()
    orig = w.srv._view

    async def view(request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] == fid:
            return error_response(404, "file not found")
        return await orig(request)

    w.replace_handler("_view", view)


def view_403(w: World) -> None:
    fid = w.one_victim()
    orig = w.srv._view

    async def view(request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] == fid:
            return error_response(403, "access denied")
        return await orig(request)

    w.replace_handler("_view", view)


def link_not_refreshable(w: World) -> None:
    """The listing's link is refused (as if expired) and asking for a fresh one fails every time."""
    view_403(w)
    fid = next(iter(w.victims))
    orig = w.srv._info

    async def info(request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] == fid:
            return error_response(500, "internal error")
        return await orig(request)

    w.replace_handler("_info", info)


def listing_fails(w: World) -> None:
    """The victim's listing is not JSON: its files are unknown; status names the target."""
    w.victims = set(w.files_of(VICTIM))
    w.named = {f"user:{VICTIM}"}
    orig = w.srv._list

    async def listing(request: web.Request) -> web.StreamResponse:
        if request.query.get("target_id") == VICTIM:
            return web.Response(body=b'{"data": [{"id": "62ce03', content_type="application/json")
        return await orig(request)

    w.replace_handler("_list", listing)


def plain_http_link(w: World) -> None:
    """The listing gives a plain-http link to a host that is not loopback (TEST-NET-1: nothing answers)."""
    fid = w.one_victim()
    orig = w.srv._file_obj

    def file_obj(rec: Any) -> dict[str, Any]:
        obj = orig(rec)
        if rec.id == fid:
            obj["fullpath"] = re.sub(r"^http://[^/]+", "http://192.0.2.1:80", obj["fullpath"])
        return obj

    w.replace_handler("_file_obj", file_obj)


def symlinked_folder(w: World) -> None:
    """The victim's folder in the backup is a symbolic link to a folder elsewhere (issue 12's reproduction)."""
    w.victims = w.named = set(w.files_of(VICTIM))
    elsewhere = w.tmp / "elsewhere"
    elsewhere.mkdir()
    (w.dest / "user").mkdir(parents=True)
    link = w.dest / "user" / VICTIM
    link.symlink_to(elsewhere)
    w.undo.append(link.unlink)


def unwritable_folder(w: World) -> None:
    """The victim's folder cannot be written: immutable (chattr +i stops even root), else EACCES injected."""
    w.victims = w.named = set(w.files_of(VICTIM))
    folder = w.dest / "user" / VICTIM
    folder.mkdir(parents=True)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        w.undo.append(lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))
        return
    real_mkdir, real_open = os.mkdir, os.open

    def refuse(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kw: Any) -> Any:
            if str(folder) in os.path.abspath(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path, *args, **kw)
        return call

    w.monkeypatch.setattr(storage, "os", _OsProxy(mkdir=refuse(real_mkdir), open=refuse(real_open)))
    w.monkeypatch.setattr(writer, "os", _OsProxy(mkdir=refuse(real_mkdir), open=refuse(real_open)))
    w.undo.append(w.monkeypatch.undo)


def disk_full(w: World) -> None:
    """The disk fills up while the victim is written (ENOSPC): the run stops (exit 3), the victim stays
    retryable.  (The manifest's and the metrics file's disk are fine.)"""
    fid = w.one_victim()
    name = next(f["name"] for f in w.srv.files() if f["id"] == fid)
    real = os.writev

    def writev(fd: int, bufs: Any) -> int:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.startswith(str(w.dest)) and name in path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, bufs)

    w.monkeypatch.setattr(storage, "os", _OsProxy(writev=writev))
    w.monkeypatch.setattr(writer, "os", _OsProxy(writev=writev))
    w.undo.append(w.monkeypatch.undo)


class _OsProxy:
    """The ``os`` module as storage and writer see it, with some functions replaced."""

    def __init__(self, **fns: Callable[..., Any]) -> None:
        self.__dict__.update(fns)

    def __getattr__(self, attr: str) -> Any:
        return getattr(os, attr)


# -- running and looking ----------------------------------------------------------------------------------

def pull(w: World) -> tuple[int, str, str]:
    """``syncer pull`` with a metrics file: (exit code, output, the metrics text)."""
    metrics = w.tmp / "syncer.prom"
    metrics.unlink(missing_ok=True)
    res = cli(["pull", "-c", str(w.cfg), "-q", "--metrics-file", str(metrics)], token=w.srv.api_key)
    return res.exit_code, res.output, metrics.read_text() if metrics.exists() else ""


def status(w: World) -> tuple[str, dict[str, Any]]:
    text = cli(["status", "-c", str(w.cfg), "--failed", "0"])
    assert text.exit_code == 0, text.output
    doc = cli(["status", "-c", str(w.cfg), "--json", "--failed", "0"])
    assert doc.exit_code == 0, doc.output
    return text.output, json.loads(doc.output)


def backed_up(w: World) -> dict[str, bytes]:
    """file id -> the bytes at its recorded local path, for every file the manifest says is done."""
    conn = sqlite3.connect(w.tmp / "manifest.sqlite")
    try:
        rows = conn.execute("SELECT file_id, local_path FROM pull_items WHERE state = 'done'").fetchall()
    finally:
        conn.close()
    out = {}
    for fid, rel in rows:
        with contextlib.suppress(OSError):
            out[fid] = (w.dest / rel).read_bytes()
    return out


def success_gauge(metrics: str) -> str | None:
    m = re.search(r'^syncer_last_run_success\{kind="pull"\} (\S+)$', metrics, re.M)
    return m[1] if m else None


CASES: dict[str, Callable[[World], None]] = {
    "view-404": view_404,
    "view-403": view_403,
    "link-not-refreshable": link_not_refreshable,
    "listing-fails": listing_fails,
    "symlinked-folder": symlinked_folder,
    "unwritable-folder": unwritable_folder,
    "disk-full": disk_full,
    "plain-http-link": plain_http_link,
}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    srv = _server()
    with srv.run_in_thread():
        cfg = write_config(tmp_path, srv, targets=[f"user:{VICTIM}", f"user:{OTHER}"], attempts=2,
                           min_wait=0.01, max_wait=0.05, timeout_connect=1.0, concurrency=4)
        w = World(srv, tmp_path, cfg, monkeypatch)
        try:
            yield w
        finally:
            for fix in reversed(w.undo):
                with contextlib.suppress(Exception):
                    fix()


@pytest.mark.parametrize("case", list(CASES))
def test_a_missing_file_is_never_green_and_the_fixed_cause_is(world: World, case: str) -> None:
    w = world
    CASES[case](w)
    everything = {f["id"]: w.srv.file_bytes(f["id"]) for f in w.srv.files()}
    assert w.victims and w.victims <= set(everything)
    for run in (1, 2):
        code, out, metrics = pull(w)
        assert code != 0, f"run {run} of {case} exited 0 with {sorted(w.victims)} missing:\n{out}"
        assert success_gauge(metrics) == "0", f"run {run}: {metrics}"
        have = backed_up(w)
        assert not w.victims & set(have), f"run {run}: a victim is recorded done"
        text, _ = status(w)
        for name in w.named:
            assert name in text, f"run {run}: status does not name {name}:\n{text}"
        check = cli(["verify", "-c", str(w.cfg), "--all"])
        assert check.exit_code == 1 and "not whole" in check.output, f"run {run}: verify:\n{check.output}"
        if code == 1:  # a run that went through (not stopped by a fatal error) says why in the metrics
            assert re.search(r'^syncer_items_failed\{kind="pull",reason="\w+"\} [1-9]', metrics, re.M) or \
                re.search(r'^syncer_targets_failed\{kind="pull"\} [1-9]', metrics, re.M), metrics
            # "already up to date" counts only what is really backed up
            up_to_date = int(re.search(r"(\d+) already up to date", out)[1])
            assert up_to_date <= len(set(everything) - w.victims)
    # The cause is fixed: the next run fetches every missing file and is green.
    for fix in reversed(w.undo):
        fix()
    w.undo.clear()
    code, out, metrics = pull(w)
    assert code == 0, out
    assert success_gauge(metrics) == "1", metrics
    assert backed_up(w) == everything
    assert cli(["verify", "-c", str(w.cfg), "--all"]).exit_code == 0
    text, st = status(w)
    assert st["pull"]["failed_total"] == 0 and st["scope_failures"] == [], text
    assert "items_failed{" not in metrics


# A plain-http view link to a host that is not loopback is refused before any connection (api/client's
# _check_link, issue 12 item 7): a permanent item error, red every run.
def test_a_plain_http_link_is_refused_as_a_permanent_item_error(world: World) -> None:
    w = world
    plain_http_link(w)
    code, out, _ = pull(w)
    assert code == 1, out
    _, st = status(w)
    item = next(i for i in st["pull"]["failed"] if i["file_id"] in w.victims)
    assert item["state"] == "permanent", item


def test_one_unwritable_folder_fails_its_files_and_the_other_patients_are_backed_up(world: World) -> None:
    # A folder we may not write is about one patient, not the disk: exit 1 (not 3), everyone else done.
    w = world
    unwritable_folder(w)
    code, out, metrics = pull(w)
    assert code == 1, out
    others = {f["id"] for f in w.srv.files() if f["id"] not in w.victims}
    assert others and others <= set(backed_up(w)), out
    assert re.search(r'^syncer_items_failed\{kind="pull",reason="LocalIOError"\} [1-9]', metrics, re.M), metrics
