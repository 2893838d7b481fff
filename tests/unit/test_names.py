"""Safe local names for hostile remote names, collision suffixes, and the path-inside check."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from syncer.local.storage import (
    MAX_NAME_BYTES,
    UnsafePathError,
    casefold_key,
    disambiguate,
    ensure_inside,
    safe_name,
    temp_name,
)

RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


def assert_safe(result: str) -> None:
    assert result
    assert not any(c in result for c in "/\\\0")
    assert result not in (".", "..")
    assert not result.startswith(".")
    assert not result.endswith((".", " "))
    assert not any(c in result for c in '<>:"|?*')
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in result)
    raw = result.encode("utf-8")  # raises on a lone surrogate
    assert len(raw) <= MAX_NAME_BYTES
    assert result.split(".", 1)[0].rstrip(" ").upper() not in RESERVED
    assert unicodedata.is_normalized("NFC", result)


# -------------------------------------------------------------------------------------------- examples


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("2017-01-21 04:00:00 - filename.pdf", "2017-01-21 04_00_00 - filename.pdf"),
        ("../../etc/passwd", "__.._etc_passwd"),
        ("a/b\\c:d.pdf", "a_b_c_d.pdf"),
        ("CON.txt", "_CON.txt"),
        ("con", "_con"),
        ("nul", "_nul"),
        ("nul.tar.gz", "_nul.tar.gz"),
        ("LPT9.doc", "_LPT9.doc"),
        ("COM1 .txt", "_COM1 .txt"),
        ("CONSOLE.txt", "CONSOLE.txt"),
        ("line1\nline2.txt", "line1_line2.txt"),
        ("tab\there\x7f\x85.txt", "tab_here__.txt"),
        ("..", "unnamed"),
        (".", "unnamed"),
        ("", "unnamed"),
        ("   ", "unnamed"),
        ("...", "unnamed"),
        ("trailing. . .", "trailing"),
        ("  spaced name.pdf  ", "spaced name.pdf"),
        (".bashrc", "_bashrc"),
        ("..hidden.txt", "_hidden.txt"),
        ("a<b>c|d?e*f\"g.txt", "a_b_c_d_e_f_g.txt"),
        ("bad\udcffbytes.txt", "bad_bytes.txt"),
        ("evil\u202egpj.exe", "evil_gpj.exe"),
    ],
)
def test_hostile_names(name: str, expected: str) -> None:
    assert safe_name(name) == expected
    assert_safe(safe_name(name))


def test_unnamed_takes_the_file_id() -> None:
    assert safe_name("", file_id="62ce0306-bd68-8fj3") == "unnamed-62ce0306"
    assert safe_name("..", file_id="a/b") == "unnamed-ab"
    assert safe_name("/", file_id="x") == "_"  # replaced, not empty
    hashed = safe_name("", file_id="///")  # no alphanumerics: 8 hex of the id's sha256
    assert hashed.startswith("unnamed-") and len(hashed) == len("unnamed-") + 8
    assert safe_name("", file_id="///") == hashed != safe_name("", file_id="//")


def test_nfc_and_nfd_give_the_same_name() -> None:
    nfc = unicodedata.normalize("NFC", "café.pdf")
    nfd = unicodedata.normalize("NFD", "café.pdf")
    assert nfc != nfd
    assert safe_name(nfc) == safe_name(nfd) == nfc


def test_long_name_is_cut_on_a_character_boundary_and_keeps_its_extension() -> None:
    name = "é" * 250 + ".pdf"
    result = safe_name(name)
    assert_safe(result)
    assert result.endswith(".pdf")
    assert len(result.encode()) <= MAX_NAME_BYTES
    assert result == "é" * 125 + ".pdf"  # 250 bytes of stem + 4
    # A long "extension" is not kept as one; the name is cut at its end.
    odd = "a" * 300 + "." + "b" * 100
    assert safe_name(odd) == ("a" * 300 + "." + "b" * 100)[:255]


def test_long_name_with_emoji_stays_valid_utf8() -> None:
    result = safe_name("👩‍⚕️" * 100 + ".jpeg")
    assert_safe(result)
    assert result.endswith(".jpeg")


@pytest.mark.parametrize(
    ("name", "ext", "expected"),
    [
        ("scan", "pdf", "scan.pdf"),
        ("scan.PDF", "pdf", "scan.PDF"),
        ("notes.txt", "pdf", "notes.txt.pdf"),
        ("", "pdf", "unnamed.pdf"),
        ("CON", "pdf", "_CON.pdf"),
        ("x", ".pdf", "x.pdf"),
        ("x", "../p/df", "x._p_df"),
        ("x", "with space", "x"),
        ("x", "", "x"),
        ("archive.tar.gz", "gz", "archive.tar.gz"),
    ],
)
def test_server_ext_is_appended_when_missing(name: str, ext: str, expected: str) -> None:
    assert safe_name(name, ext=ext) == expected


def test_disambiguate_inserts_a_tag_before_the_extension() -> None:
    a = disambiguate("report.pdf", "id-1")
    b = disambiguate("report.pdf", "id-2")
    assert a != b
    assert a.startswith("report~") and a.endswith(".pdf")
    assert len(a) == len("report~12345678.pdf")
    assert disambiguate("report.pdf", "id-1") == a  # deterministic
    long = disambiguate(safe_name("x" * 300 + ".pdf"), "id-1")
    assert len(long.encode()) <= MAX_NAME_BYTES and long.endswith(".pdf") and "~" in long
    assert_safe(disambiguate("noext", "id"))


def test_casefold_key() -> None:
    assert casefold_key("Report.PDF") == casefold_key("report.pdf")
    assert casefold_key(unicodedata.normalize("NFD", "CAFÉ")) == casefold_key("café")
    assert casefold_key("Straße") == casefold_key("STRASSE")
    assert casefold_key("a.pdf") != casefold_key("b.pdf")


def test_temp_name_stays_within_the_limit() -> None:
    assert temp_name("a.pdf") == ".a.pdf.syncer-part"
    long = safe_name("é" * 250 + ".pdf")
    t = temp_name(long)
    assert len(t.encode()) <= MAX_NAME_BYTES and t.startswith(".") and t.endswith(".syncer-part")
    assert temp_name(long) == t and temp_name(long + "x") != t


# ----------------------------------------------------------------------------------------- properties

# Any text (lone surrogates included), with the troublemakers made frequent.
names = st.lists(
    st.one_of(
        st.text(max_size=20),
        st.sampled_from(list("./\\ :\0\n\x85\u202e\udc80é") + ["e\u0301", "CON", "nul", "COM1", ".pdf"]),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(names, st.text(max_size=10))
@example("é" * 300, "")
@example("CON", "")
@example(".", "")
@example("a" * 254 + "\u0301" * 5, "")
def test_safe_name_properties(name: str, file_id: str) -> None:
    result = safe_name(name, file_id=file_id)
    assert_safe(result)
    assert safe_name(name, file_id=file_id) == result  # stable
    assert safe_name(result, file_id=file_id) == result  # already safe names pass unchanged


@settings(max_examples=200, deadline=None)
@given(names, st.text(max_size=40))
def test_safe_name_with_ext_properties(name: str, ext: str) -> None:
    result = safe_name(name, ext=ext)
    assert_safe(result)
    assert safe_name(result, ext=ext) == result


@settings(max_examples=200, deadline=None)
@given(names, st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_disambiguate_properties(name: str, id1: str, id2: str) -> None:
    safe = safe_name(name)
    a, b = disambiguate(safe, id1), disambiguate(safe, id2)
    assert_safe(a)
    assert_safe(b)
    assert (a == b) == (id1 == id2)
    assert a != safe


@settings(max_examples=100, deadline=None)
@given(names)
def test_safe_name_is_inside_any_root(name: str) -> None:
    root = Path("/nonexistent-root/dest")
    path = ensure_inside(root, Path("user", "1", "user_document", safe_name(name)))
    assert path.parent == root / "user" / "1" / "user_document"


# ------------------------------------------------------------------------------------------ ensure_inside


def test_ensure_inside_accepts(tmp_path: Path) -> None:
    (tmp_path / "user").mkdir()
    assert ensure_inside(tmp_path, "user/1/a.pdf") == tmp_path.resolve() / "user/1/a.pdf"
    assert ensure_inside(tmp_path, Path("x")) == tmp_path.resolve() / "x"
    assert ensure_inside(tmp_path, "user/../b") == tmp_path.resolve() / "b"
    assert ensure_inside(tmp_path, tmp_path / "abs.pdf") == tmp_path.resolve() / "abs.pdf"
    # A symlinked folder that stays inside is fine.
    (tmp_path / "inner").symlink_to(tmp_path / "user")
    assert ensure_inside(tmp_path, "inner/c") == tmp_path.resolve() / "user/c"


@pytest.mark.parametrize("rel", ["../x", "../../etc/passwd", "/etc/passwd", "a/../../x", "", ".", "a/.."])
def test_ensure_inside_rejects(tmp_path: Path, rel: str) -> None:
    root = tmp_path / "dest"
    root.mkdir()
    with pytest.raises(UnsafePathError):
        ensure_inside(root, rel)
    assert issubclass(UnsafePathError, ValueError)


def test_ensure_inside_rejects_a_symlinked_parent_leading_out(tmp_path: Path) -> None:
    root = tmp_path / "dest"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "user").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        ensure_inside(root, "user/1/a.pdf")


def test_ensure_inside_does_not_follow_the_last_component(tmp_path: Path) -> None:
    root = tmp_path / "dest"
    root.mkdir()
    (root / "a.pdf").symlink_to("/etc/passwd")
    # The link itself is inside; writers replace it atomically, readers refuse it (open_nofollow).
    assert ensure_inside(root, "a.pdf") == root.resolve() / "a.pdf"
    assert os.path.islink(ensure_inside(root, "a.pdf"))


# ------------------------------------------------------------------------ the collision rule of a pull plan


def _colliding_names() -> st.SearchStrategy[str]:
    """Names that often land on one safe name: case and NFC/NFD twins, names that sanitise alike, long
    names sharing their first 255 bytes, reserved names, and arbitrary text."""
    base = st.sampled_from(["scan.pdf", "Scan.PDF", "SCAN.pdf", "café.txt", "cafe\u0301.txt", "CAFÉ.TXT",
                            "a:b.pdf", "a/b.pdf", "a_b.pdf", "a\\b.pdf", "con", "CON", "con.pdf", ".pdf", "",
                            "..", "ß.txt", "ss.txt", "SS.txt", "x" * 300 + ".pdf", "x" * 300 + "1.pdf",
                            "é" * 200, "e\u0301" * 200])
    return st.one_of(base, base.map(lambda s: s.upper()), names)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_colliding_names(), st.sampled_from(["user_document", "user_consent", None]),
                          st.integers(0, 5)), min_size=1, max_size=40),
       st.integers(0, 40))
def test_plan_target_never_gives_two_files_one_path(entries: list[tuple[str, str | None, int]], split: int) -> None:
    """Random names in one target: every file gets its own local path (distinct case-insensitively, after
    NFC), inside dest, in its target's folder; and a second run that sees more files keeps the paths of
    the first and still gives every new file a path of its own."""
    from syncer.models import RemoteFile, Target
    from syncer.pull.plan import folder_for, plan_target

    dest = Path("/nonexistent-root/dest")
    target = Target("user", "2317820300")
    listing = [RemoteFile(id=f"id-{i}", name=name, size=1, category=cat, created=created)
               for i, (name, cat, created) in enumerate(entries)]
    first = plan_target(target, listing[:split], [], dest=dest, check_local=False)
    rows = [dict(r, sha256=None) for r in first.inserts]
    second = plan_target(target, listing, rows, dest=dest, check_local=False)
    all_rows = rows + second.inserts
    assert len(all_rows) == len(listing)
    keys = [casefold_key(r["local_path"]) for r in all_rows]
    assert len(set(keys)) == len(keys), "two files share a local path"
    assert [r["path_key"] for r in all_rows] == keys
    for r in all_rows:
        path = ensure_inside(dest, r["local_path"])
        assert path.parent == dest / folder_for(target, r["category"])
        assert_safe(path.name)
        assert len(temp_name(path.name).encode()) <= MAX_NAME_BYTES
    # The first run's files kept their paths; planning the same listing again changes nothing.
    assert {r["file_id"]: r["local_path"] for r in rows}.items() <= {r["file_id"]: r["local_path"]
                                                                     for r in all_rows}.items()
    again = plan_target(target, listing, all_rows, dest=dest, check_local=False)
    assert not again.inserts and not again.updates


@settings(max_examples=100, deadline=None)
@given(st.lists(_colliding_names(), min_size=1, max_size=20), st.lists(_colliding_names(), min_size=1, max_size=20))
def test_plan_target_keeps_twin_targets_apart(names_a: list[str], names_b: list[str]) -> None:
    """Two targets whose ids become one folder (``a:b`` and ``a_b``): with the keys the first one holds
    passed as ``taken_elsewhere``, the second never takes a path of the first."""
    from syncer.models import RemoteFile, Target
    from syncer.pull.plan import candidate_keys, plan_target

    dest = Path("/nonexistent-root/dest")
    a, b = Target("user", "a:b"), Target("user", "a_b")
    files_a = [RemoteFile(id=f"a{i}", name=n, size=1, category="user_document") for i, n in enumerate(names_a)]
    files_b = [RemoteFile(id=f"b{i}", name=n, size=1, category="user_document") for i, n in enumerate(names_b)]
    plan_a = plan_target(a, files_a, [], dest=dest, check_local=False)
    held = {r["path_key"] for r in plan_a.inserts}
    plan_b = plan_target(b, files_b, [], dest=dest, check_local=False,
                         taken_elsewhere=held & set(candidate_keys(b, files_b, [])))
    keys = [r["path_key"] for r in plan_a.inserts + plan_b.inserts]
    assert len(keys) == len(set(keys)) == len(names_a) + len(names_b)
