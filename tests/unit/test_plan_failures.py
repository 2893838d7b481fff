"""The pull planner and what is left failed (issue 12): every file not backed up is tried again, only a done
file with its local copy counts as up to date, an acknowledgement is void once the file changes, and a
listing without include_shared proves nothing about documents only a shared listing showed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from syncer.models import RemoteFile, Target
from syncer.pull.plan import plan_target

USER = Target("user", "1001")


def remote(fid: str, size: int = 10, category: str = "user_document") -> RemoteFile:
    return RemoteFile(id=fid, name=f"{fid}.pdf", size=size, ext="pdf", category=category)


def row(fid: str, state: str, *, size: int = 10, category: str = "user_document", acked: bool = False,
        listed_own: int | None = 1) -> dict[str, Any]:
    return {"file_id": fid, "remote_name": f"{fid}.pdf", "size": size, "state": state,
            "local_path": f"user/1001/{category}/{fid}.pdf", "path_key": f"user/1001/{category}/{fid}.pdf",
            "sha256": "0" * 64 if state == "done" else None, "category": category, "created": 1, "modified": 1,
            "acked_at": "2026-12-03T10:00:00.000Z" if acked else None, "listed_own": listed_own}


def test_every_file_not_backed_up_is_tried_again_and_only_present_files_are_up_to_date(tmp_path: Path) -> None:
    present = tmp_path / "user/1001/user_document/done.pdf"
    present.parent.mkdir(parents=True)
    present.write_bytes(b"x" * 10)
    rows = [row("done", "done"), row("gone", "done"), row("perm", "permanent"), row("fail", "failed"),
            row("pend", "pending")]
    plan = plan_target(USER, [remote(r["file_id"]) for r in rows], rows, dest=tmp_path)
    assert sorted(w.file_id for w in plan.todo) == ["fail", "gone", "pend", "perm"]
    assert plan.up_to_date == 1  # "done" only: "gone" is done in the manifest but missing on disk


def test_an_acknowledgement_rides_along_until_the_file_changes(tmp_path: Path) -> None:
    rows = [row("same", "permanent", acked=True), row("grew", "permanent", acked=True)]
    plan = plan_target(USER, [remote("same"), remote("grew", size=11)], rows, dest=tmp_path)
    acked = {w.file_id: w.acked for w in plan.todo}
    assert acked == {"same": True, "grew": False}
    [update] = [u for u in plan.updates if u.key[2] == "grew"]
    assert update.fields["acked_at"] is None and update.fields["acked_by"] is None
    assert not [u for u in plan.updates if u.key[2] == "same"]


def test_a_listing_without_include_shared_deletes_only_what_it_covers(tmp_path: Path) -> None:
    rows = [row("shared", "done", listed_own=None), row("own-doc", "done"),
            row("consent", "done", category="user_consent", listed_own=None)]
    plan = plan_target(USER, [], rows, dest=tmp_path)
    assert sorted(k[2] for k in plan.deleted) == ["consent", "own-doc"]  # a consent is never someone else's
    plan = plan_target(USER, [], rows, dest=tmp_path, include_shared=True)
    assert sorted(k[2] for k in plan.deleted) == ["consent", "own-doc", "shared"]


def test_a_document_seen_in_an_own_listing_is_marked_own_once(tmp_path: Path) -> None:
    rows = [row("doc", "pending", listed_own=None)]
    plan = plan_target(USER, [remote("doc")], rows, dest=tmp_path, check_local=False)
    assert [u.fields.get("listed_own") for u in plan.updates] == [1]
    plan = plan_target(USER, [remote("new")], [], dest=tmp_path, include_shared=True)
    assert plan.inserts[0]["listed_own"] is None
    plan = plan_target(USER, [remote("new")], [], dest=tmp_path)
    assert plan.inserts[0]["listed_own"] == 1
