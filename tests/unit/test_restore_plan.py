"""Pure restore logic: the user map, sendable names, and the plan against a listing and earlier rows."""

from __future__ import annotations

import pytest

from syncer.errors import ConfigError
from syncer.inputs.usermap import parse_user_map
from syncer.models import RemoteFile
from syncer.restore.plan import BackupFile, plan_user, select, sendable_name


def test_user_map_parses_and_names_the_bad_line() -> None:
    assert parse_user_map("# migration\nsource_user_id,dest_user_id\n\n11,21\n12 , 22\n") == {"11": "21", "12": "22"}
    for text, line, words in [
        ("source_user_id,dest_user_id\n11,21\n11,22\n", 3, "source user 11 appears twice (first on line 2)"),
        ("source_user_id,dest_user_id\n11,21\n12,21\n", 3, "destination user 21 appears twice"),
        ("source_user_id,dest_user_id\n11,21,31\n", 2, "expected 2 columns"),
        ("source_user_id,dest_user_id\n11,../x\n", 2, "is not an id"),
        ("user_id,token\n11,21\n", 1, "header"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_user_map(text, "users.csv")
        assert f"users.csv:{line}:" in str(err.value) and words in str(err.value)
    with pytest.raises(ConfigError, match="empty"):
        parse_user_map("", "users.csv")


@pytest.mark.parametrize(("name", "sent"), [
    ("report.pdf", "report.pdf"),
    ('quote " and \\ back', 'quote " and \\ back'),
    ("é 報告 \u202egnp.exe", "é 報告 \u202egnp.exe"),     # format characters are not controls
    ("line1\nline2\r.txt", "line1_line2_.txt"),
    ("nul\x00byte\x7f\x85.txt", "nul_byte__.txt"),       # NUL, DEL and a C1 control
    ("tab\there", "tab_here"),
    ("", "_"),
])
def test_sendable_name(name: str, sent: str) -> None:
    assert sendable_name(name) == sent


def row(fid: str, *, user: str = "7", name: str = "a.pdf", size: int = 3, sha: str | None = "s1",
        category: str = "user_document", ttype: str = "user", state: str = "done", owner: str | None = None) -> dict:
    return {"target_type": ttype, "target_id": user, "file_id": fid, "category": category, "remote_name": name,
            "size": size, "sha256": sha, "local_path": f"{ttype}/{user}/{fid}", "state": state, "owner_id": owner}


def remote(fid: str, name: str = "a.pdf", size: int = 3, category: str = "user_document") -> RemoteFile:
    return RemoteFile(id=fid, name=name, size=size, category=category)


def test_select_sorts_the_backup() -> None:
    rows = [row("f1"), row("f2", category="user_consent"), row("v1", ttype="visit", user="9",
                                                               category="intake_attachment"),
            row("f3", state="pending", sha=None), row("f4", user="8"), row("f5", owner="8"),
            row("f6", user="6")]
    sel = select(rows, dest_for={"7": "70", "8": "80"}.get)
    assert [f.file_id for f in sel.by_user["7"]] == ["f1", "f2"]
    assert [f.file_id for f in sel.by_user["8"]] == ["f4"]
    assert sel.not_restorable == 1 and sel.unmapped == {"6": 1}
    assert sel.skipped["never fully backed up"] == 1
    assert sum(sel.skipped.values()) == 2  # f5: another backed-up user's document, shared with 7
    only = select(rows, users=("7",), categories=("user_consent",))
    assert [f.file_id for f in only.by_user["7"]] == ["f2"] and only.not_restorable == 0


def test_plan_same_ids_sends_only_what_is_gone() -> None:
    files = [BackupFile.from_row(row(f"f{i}", name=f"n{i}.pdf")) for i in range(4)]
    listing = [remote("f0", "n0.pdf"), remote("f1", "n1.pdf"), remote("new2", "n2.pdf")]
    rows = {("user:7", "f2"): {"state": "done", "dest_file_id": "new2", "sha256": "s1", "intent_at": 1.0}}
    plan = plan_user("7", "7", files, listing, rows, same_ids=True, claimed={"f0", "f1", "new2"})
    assert plan.present == 2 and plan.restored == 1
    assert [i.source.file_id for i in plan.items] == ["f3"] and not plan.items[0].candidates
    assert [r["source_file_id"] for r in plan.inserts] == ["f3"]


def test_plan_copy_finds_lookalikes_and_reconciles_first() -> None:
    files = [BackupFile.from_row(row("f1", name="x\ny.pdf")), BackupFile.from_row(row("f2", name="b.pdf")),
             BackupFile.from_row(row("f3", name="c.pdf"))]
    listing = [remote("d1", "x_y.pdf"), remote("d2", "b.pdf", size=4), remote("d3", "c.pdf"),
               remote("d4", "x_y.pdf", category="user_consent")]
    rows = {("user:7", "f3"): {"state": "uploading", "dest_file_id": None, "sha256": "s1", "intent_at": 5.0}}
    plan = plan_user("7", "70", files, listing, rows, same_ids=False, claimed={"d3"})
    assert [i.source.file_id for i in plan.items] == ["f3", "f1", "f2"]     # the earlier attempt first
    assert plan.items[0].reconcile and not plan.items[0].candidates        # d3 is claimed
    assert [c.id for c in plan.items[1].candidates] == ["d1"]               # same name as sent, size, category
    assert plan.items[1].sent_name == "x_y.pdf" and plan.renamed == 1
    assert plan.items[2].candidates == []                                   # another size
    assert {r["source_file_id"] for r in plan.inserts} == {"f1", "f2"}
