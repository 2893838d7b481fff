"""``syncer status``: what the manifest says, for operators (a table) and scripts (one JSON document).

Reads the manifest only, through a read-only connection (``Manifest.open(readonly=True)``), inside
one read transaction so every number comes from the same snapshot.  In WAL mode a reader never waits
for a writer, so status answers while a pull or push is running (it shows that run as ``running``).

Decisions:

- No manifest at the configured path is an error (``ManifestError``, exit 2), not an empty status:
  a typo in ``-c`` or ``manifest.path`` must not look like "nothing failed".  Nothing is created.
  A manifest that exists but has no rows yet gives an all-zero status.
- Every known state is present in ``states`` (zero when empty), so scripts need no ``.get``.
- Failed items are the newest ``failures`` per kind (default 50; 0 or less lists them all);
  ``failed_total`` says how many there are in all.  Pull lists ``failed`` and ``permanent`` items,
  push also ``uploading`` ones (an upload whose outcome is not known yet).
- Errors are stored secret-free; they are scrubbed once more anyway and never hold a view link.
- An acknowledged permanent failure (``syncer ack``) is still listed, with ``acked_by``/``acked_at``/
  ``ack_reason``; ``acknowledged`` counts them (they are part of ``failed_total``).
- ``scope_failures``: whole targets (or users) that could not be listed (``list_failed``, ``not_found``,
  ``incomplete_listing``) or listed nothing (``listed_nothing``), until a later run finds them sound.
  ``detail`` is syncer's own description (never the server's text, never a name).
  ``last_error`` holds our own words only; what the server said about a failure (which may name a
  patient) is in the failure's event ``detail``, the file's name taken out, and is shown only with
  ``details=True`` (``syncer status --details``), as each failed item's ``detail``.
- Text output escapes every server-supplied string (``syncer.redact.escape``); JSON is pure ASCII.
- A ``running`` run gets ``alive``: whether its process still exists (same host only; ``None`` when
  it cannot be told).  ``False`` means it was killed; the next run marks it so.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, TextIO

from syncer.local.lock import pid_alive
from syncer.manifest import Manifest, now_iso
from syncer.manifest.restore_rows import restore_summary
from syncer.models import PullState, PushState
from syncer.redact import escape as _safe
from syncer.redact import name_id, scrub
from syncer.report.progress import human_bytes

PULL_STATES = tuple(s.value for s in PullState)
PUSH_STATES = tuple(s.value for s in PushState)
DEFAULT_RUNS = 10
DEFAULT_FAILURES = 50
_FAILING = {"pull": ("failed", "permanent"), "push": ("failed", "permanent", "uploading")}


def collect(manifest_path: str | os.PathLike, *, runs: int = DEFAULT_RUNS,
            failures: int = DEFAULT_FAILURES, details: bool = False) -> dict[str, Any]:
    """The status document (see the module docstring); ManifestError when there is no manifest."""
    manifest = Manifest.open(Path(manifest_path), create=False, readonly=True)
    try:
        manifest.conn.execute("BEGIN")  # one snapshot for every query below
        try:
            raw = manifest.summary(runs=runs, failures=failures if failures > 0 else -1)
            if details:
                _add_details(manifest, raw)
            raw["restore"] = restore_summary(manifest, failures=failures if failures > 0 else -1)
        finally:
            manifest.conn.execute("ROLLBACK")
    finally:
        manifest.close()
    return _shape(raw, details=details)


def _add_details(manifest: Manifest, raw: dict[str, Any]) -> None:
    """Each failed item's ``detail``: the detail of its newest ``failed`` event (None when there is none).
    One pass over the failure events of each kind: they are keyed by item, which has no index."""
    for kind in ("pull", "push"):
        wanted = {_event_item(kind, item): item for item in raw[kind]["failed"]}
        if not wanted:
            continue
        found: dict[str, str | None] = {}
        for item_key, detail in manifest.conn.execute(
                "SELECT item, detail FROM events WHERE kind = ? AND event = 'failed' ORDER BY id", (kind,)):
            if item_key in wanted:
                found[item_key] = detail
        for item_key, item in wanted.items():
            item["detail"] = found.get(item_key)


def _event_item(kind: str, item: dict[str, Any]) -> str:
    """The ``events.item`` of a failed item: its manifest key joined by '/'."""
    if kind == "pull":
        ttype, _, tid = item["target"].partition(":")
        return f"{ttype}/{tid}/{item['file_id']}"
    return f"{item['user_id']}/{item['rel_path']}"


def _shape(raw: dict[str, Any], *, details: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"manifest": raw["manifest"], "schema": raw["schema"], "generated_at": now_iso()}
    for kind, known in (("pull", PULL_STATES), ("push", PUSH_STATES)):
        found = raw[kind]["states"]
        states = {s: dict(found.get(s, {"count": 0, "bytes": 0})) for s in known}
        states.update({s: v for s, v in found.items() if s not in states})  # a state from a newer syncer
        failed = []
        for item in raw[kind]["failed"]:
            item = dict(item)
            item["last_error"] = scrub(item["last_error"]) if item.get("last_error") else item.get("last_error")
            if item.get("detail"):
                item["detail"] = scrub(item["detail"])
            if kind == "push":
                # A local file's name is patient data: its short id (what the logs say, what
                # `syncer ack push` accepts); the name itself only with --details.
                item["item"] = name_id(item["rel_path"])
                if not details:
                    item.pop("rel_path")
            failed.append(item)
        out[kind] = {
            "total": {"count": sum(v["count"] for v in states.values()),
                      "bytes": sum(v["bytes"] for v in states.values())},
            "states": states,
            "failed_total": sum(states[s]["count"] for s in _FAILING[kind] if s in states),
            "acknowledged": raw[kind].get("acknowledged", {"count": 0, "bytes": 0}),
            "failed": failed,
        }
        if "stored" in raw[kind]:
            out[kind]["stored"] = dict(raw[kind]["stored"])  # backed-up files stored plain / encrypted
    out["scope_failures"] = [dict(f, detail=scrub(f["detail"]) if f.get("detail") else f.get("detail"))
                             for f in raw.get("scope_failures", [])]
    out["restore"] = _shape_restore(raw.get("restore"))
    host = socket.gethostname()
    out["runs"] = [dict(r, alive=_alive(r, host) if r["outcome"] == "running" else None) for r in raw["runs"]]
    return out


def _shape_restore(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """The restore section (``syncer restore``): counts by state, failed items and the old -> new id
    mapping (the ``--mapping-out`` rows); None for a manifest from before restores (schema < 3)."""
    if raw is None:
        return None
    states = raw["states"]
    failed = [dict(i, last_error=scrub(i["last_error"]) if i.get("last_error") else i.get("last_error"))
              for i in raw["failed"]]
    return {"total": {"count": sum(v["count"] for v in states.values()),
                      "bytes": sum(v["bytes"] for v in states.values())},
            "states": states, "failed_total": sum(v["count"] for k, v in states.items() if k in _FAILING["push"]),
            "failed": failed, "mapping": raw["mapping"]}


def _alive(run: dict[str, Any], host: str) -> bool | None:
    """Whether a run marked running is still alive: known only on its own host."""
    return pid_alive(run.get("pid")) if run.get("host") == host else None


# -- human output --------------------------------------------------------------------------------
def _detail(item: dict[str, Any]) -> str | None:
    """What the server said about a failed item, when ``--details`` asked for it and it says more."""
    detail = item.get("detail")
    return detail if detail and detail != item.get("last_error") else None


def _item_name(kind: str, item: dict[str, Any]) -> str:
    if kind == "pull":
        return f"{item['target']}/{item['file_id']}"
    name = f" ({item['rel_path']})" if item.get("rel_path") else ""
    return f"user:{item['user_id']}/item {item['item']}{name}"


def _item_state(item: dict[str, Any]) -> str:
    if not item.get("acked_at"):
        return str(item["state"])
    return f"{item['state']}, acknowledged by {_safe(item['acked_by'])} at {item['acked_at']}"


# What each reason of a scope failure means, for the human output.
SCOPE_REASONS = {
    "list_failed": "could not be listed",
    "not_found": "are unknown to the server (404)",
    "incomplete_listing": "listed items that could not be read",
    "listed_nothing": "listed no files",
    # push: what could not be uploaded under the source (named by place and hash in the detail, never by name)
    "symlink_folder": "are symbolic links, not followed",
    "not_a_user_id": "are not named by a user id",
    "file_in_root": "are files outside any user folder",
    "unreadable": "cannot be read",
    "no_token": "have no token in the tokens file",
    "no_folder": "have no folder under the source",
}


def _scope_lines(st: dict[str, Any]) -> list[str]:
    """One header per (kind, scope, reason), then one line per scope: red ones first."""
    lines: list[str] = []
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for f in st.get("scope_failures", []):
        groups.setdefault((f["kind"], f["scope"], f["reason"]), []).append(f)
    order = sorted(groups, key=lambda k: (k[2] == "listed_nothing", k))
    for kind, scope, reason in order:
        rows = groups[(kind, scope, reason)]
        what = SCOPE_REASONS.get(reason, reason)
        lines.append(f"{kind} {scope}s that {what} ({len(rows)}):" if what != reason
                     else f"{kind} {scope}s failed: {_safe(reason)} ({len(rows)}):")
        for f in rows:
            ack = f", acknowledged by {_safe(f['acked_by'])}" if f.get("acked_at") else ""
            lines.append(f"  {_safe(f['scope_id'])}  {f['error_class'] or '-'}  since {f['first_seen']}"
                         f"  last {f['last_seen']}{ack}  {_safe(f.get('detail') or '')}".rstrip())
    return lines


def _outcome(run: dict[str, Any]) -> str:
    if run["outcome"] == "running" and run.get("alive") is False:
        return "running? (process gone)"
    return str(run["outcome"])


def _states_line(section: dict[str, Any]) -> str:
    parts = [f"{s} {v['count']} ({human_bytes(v['bytes'])})" for s, v in section["states"].items() if v["count"]]
    return ", ".join(parts) if parts else "nothing recorded"


def render_text(st: dict[str, Any]) -> str:
    """Plain text (for pipes, cron mail, logs): no colours, no control characters."""
    lines = [f"manifest {_safe(st['manifest'])}"]
    for kind in ("pull", "push"):
        sec = st[kind]
        lines.append(f"{kind}: {sec['total']['count']} items ({human_bytes(sec['total']['bytes'])}): "
                     f"{_states_line(sec)}")
        if "stored" in sec:
            lines.append(f"pull: stored {sec['stored']['plain']} plain, {sec['stored']['encrypted']} encrypted (age)")
    if st.get("restore") and st["restore"]["total"]["count"]:
        lines.append(f"restore: {st['restore']['total']['count']} items: {_states_line(st['restore'])}"
                     f" ({len(st['restore']['mapping'])} restored, see --json for the id mapping)")
    lines.append(f"last runs ({len(st['runs'])}):" if st["runs"] else "no runs yet")
    for r in st["runs"]:
        lines.append(f"  {r['id']}  {r['kind']:<4}  {r['started']} -> {r['ended'] or '-'}  {_outcome(r)}  "
                     f"done {r['files_done'] or 0} ({human_bytes(r['bytes_done'] or 0)}), "
                     f"failed {r['failed'] or 0}, skipped {r['skipped'] or 0}")
    for kind in ("pull", "push"):
        sec = st[kind]
        if not sec["failed_total"]:
            continue
        acked = sec["acknowledged"]["count"]
        lines.append(f"failed {kind} items ({len(sec['failed'])} of {sec['failed_total']}"
                     f"{f', {acked} acknowledged' if acked else ''}, newest first):")
        for item in sec["failed"]:
            lines.append(f"  {_safe(_item_name(kind, item))}  {_item_state(item)}  attempts {item['attempts'] or 0}  "
                         f"{item['error_class'] or '-'}  {_safe(item['last_error'] or '')}")
            if _detail(item):
                lines.append(f"    server said: {_safe(_detail(item))}")
    lines.extend(_scope_lines(st))
    return "\n".join(lines)


def print_rich(st: dict[str, Any], stream: TextIO | None = None, *, console: Any = None) -> None:
    """Compact tables for a terminal.  Every cell is a ``Text``: nothing from the data is markup."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console(file=stream, highlight=False)
    console.print(Text(f"manifest {st['manifest']}", style="dim"))
    counts = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    counts.add_column("kind")
    for col in ("state", "items", "bytes"):
        counts.add_column(col, justify="right" if col != "state" else "left")
    for kind in ("pull", "push"):
        sec = st[kind]
        shown = [(s, v) for s, v in sec["states"].items() if v["count"]] or [("-", {"count": 0, "bytes": 0})]
        for i, (state, v) in enumerate(shown):
            style = "red" if state in _FAILING[kind] else ""
            counts.add_row(Text(kind if i == 0 else ""), Text(state, style=style), Text(str(v["count"])),
                           Text(human_bytes(v["bytes"])))
    console.print(counts)
    if "stored" in st["pull"]:
        console.print(Text(f"pull files stored: {st['pull']['stored']['plain']} plain, "
                           f"{st['pull']['stored']['encrypted']} encrypted (age)"))
    if st["runs"]:
        runs = Table(title="last runs", title_justify="left", box=box.SIMPLE, show_edge=False, pad_edge=False)
        for col in ("run", "kind", "started", "ended", "outcome", "done", "bytes", "failed", "skipped"):
            runs.add_column(col, justify="right" if col in ("done", "bytes", "failed", "skipped") else "left")
        for r in st["runs"]:
            style = {"ok": "green", "running": "cyan"}.get(r["outcome"], "red")
            runs.add_row(Text(r["id"]), Text(r["kind"]), Text(r["started"] or "-"), Text(r["ended"] or "-"),
                         Text(_outcome(r), style=style), Text(str(r["files_done"] or 0)),
                         Text(human_bytes(r["bytes_done"] or 0)), Text(str(r["failed"] or 0)),
                         Text(str(r["skipped"] or 0)))
        console.print(runs)
    else:
        console.print(Text("no runs yet"))
    for kind in ("pull", "push"):
        sec = st[kind]
        if not sec["failed_total"]:
            continue
        table = Table(title=f"failed {kind} items ({len(sec['failed'])} of {sec['failed_total']}, newest first)",
                      title_justify="left", box=box.SIMPLE, show_edge=False, pad_edge=False)
        for col in ("item", "state", "attempts", "error", "last error"):
            table.add_column(col, overflow="fold")
        for item in sec["failed"]:
            table.add_row(Text(_safe(_item_name(kind, item))),
                          Text(_item_state(item), style="yellow" if item.get("acked_at") else "red"),
                          Text(str(item["attempts"] or 0)), Text(item["error_class"] or "-"),
                          Text(_safe(item["last_error"] or "")
                               + (f"; server said: {_safe(_detail(item))}" if _detail(item) else "")))
        console.print(table)
    for line in _scope_lines(st):
        console.print(Text(line, style="" if line.startswith("  ") else "bold"))


def print_human(st: dict[str, Any], stream: TextIO) -> None:
    """A rich table when ``stream`` is a terminal, plain text otherwise."""
    if stream.isatty():
        print_rich(st, stream)
    else:
        print(render_text(st), file=stream)


# -- the fleet: every shard's snapshot in a bucket (status --all-shards) ----------------------------------
def collect_all_shards(dest: str, cfg: Any, *, failures: int = DEFAULT_FAILURES) -> dict[str, Any]:
    """Every shard's status, read from its manifest snapshot in the bucket, with the totals."""
    import tempfile

    from syncer.run.loop import run_async
    from syncer.store.s3 import ObjectSink
    from syncer.store.snapshot import fetch_all

    sink = ObjectSink.from_config(dest, cfg)
    with tempfile.TemporaryDirectory(prefix="syncer-shards-") as tmp:
        found = run_async(fetch_all(sink, Path(tmp)))
        shards = [dict(collect(path, runs=1, failures=failures), shard=name, marked_running=marked)
                  for name, path, marked in found]
    totals: dict[str, Any] = {}
    for kind in ("pull", "push"):
        states: dict[str, dict[str, int]] = {}
        for sh in shards:
            for state, v in sh[kind]["states"].items():
                acc = states.setdefault(state, {"count": 0, "bytes": 0})
                acc["count"] += v["count"]
                acc["bytes"] += v["bytes"]
        totals[kind] = {"total": {"count": sum(v["count"] for v in states.values()),
                                  "bytes": sum(v["bytes"] for v in states.values())},
                        "states": states,
                        "failed_total": sum(sh[kind]["failed_total"] for sh in shards)}
    return {"dest": dest, "generated_at": now_iso(), "shards": shards, "total": totals}


def render_fleet(fleet: dict[str, Any]) -> str:
    lines = [f"{len(fleet['shards'])} shard snapshots under {_safe(fleet['dest'])}"]
    for sh in fleet["shards"]:
        run = sh["runs"][0] if sh["runs"] else None
        last = (f"last run {run['id']} {_outcome(run)} {run['started']} -> {run['ended'] or '-'}, "
                f"done {run['files_done'] or 0}, failed {run['failed'] or 0}") if run else "no runs yet"
        mark = "; a run is marked running (going on now, or killed)" if sh["marked_running"] else ""
        lines.append(f"  {_safe(sh['shard'])}: pull {sh['pull']['total']['count']} items "
                     f"({human_bytes(sh['pull']['total']['bytes'])}): {_states_line(sh['pull'])}; {last}{mark}")
    total = fleet["total"]["pull"]
    lines.append(f"all shards: pull {total['total']['count']} items ({human_bytes(total['total']['bytes'])}): "
                 f"{_states_line(total)}; failed {total['failed_total']}")
    return "\n".join(lines)
