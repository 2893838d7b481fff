"""The tokens file: private mode (like an ssh key), strict CSV, and never a token in a message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncer.errors import ConfigError
from syncer.inputs.tokens import load_tokens, parse_tokens, valid_user_id
from syncer.local.storage import LoosePermissionsError
from syncer.logs import scrub

SECRET_A = "tok-aaaaaaaaaaaaaaaaaaaa1111"
SECRET_B = "tok-bbbbbbbbbbbbbbbbbbbb2222"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def test_loads_users_and_tokens_with_comments_blank_lines_and_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "tokens.csv",
                 "\ufeff# exported 2026-11-01\n\nuser_id,token\n"
                 f"2317820300,{SECRET_A}\n\n# a comment, with a comma\n 350936 , {SECRET_B} \n")
    assert load_tokens(path) == {"2317820300": SECRET_A, "350936": SECRET_B}


def test_every_token_is_masked_in_logs_once_loaded(tmp_path: Path) -> None:
    secret = "only-in-this-test-7f3c9e1d2b"
    assert scrub(f"header X: {secret} end") == f"header X: {secret} end"
    path = write(tmp_path / "tokens.csv", f"user_id,token\n1,{secret}\n")
    load_tokens(path)
    assert scrub(f"header X: {secret} end") == "header X: <redacted> end"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o700 | 0o040])
def test_a_loose_file_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "tokens.csv", f"user_id,token\n1,{SECRET_A}\n", mode)
    with pytest.raises(LoosePermissionsError) as info:
        load_tokens(path)
    assert isinstance(info.value, ConfigError)  # exit 2
    message = str(info.value)
    assert str(path) in message
    assert "chmod 600" in message
    assert SECRET_A not in message


def test_owner_only_modes_are_accepted(tmp_path: Path) -> None:
    for mode in (0o600, 0o400):
        path = write(tmp_path / f"t{mode:o}.csv", f"user_id,token\n1,{SECRET_A}\n", mode)
        assert load_tokens(path) == {"1": SECRET_A}


def test_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokens(tmp_path / "nope.csv")


@pytest.mark.parametrize(("text", "where"), [
    (f"id,token\n1,{SECRET_A}\n", ":1: the first line must be the header"),
    (f"{SECRET_A}\n", ":1: the first line must be the header"),
    (f"user_id,token\n1,{SECRET_A},extra\n", ":2: expected 2 columns"),
    (f"user_id,token\n1\n2,{SECRET_B}\n", ":2: expected 2 columns"),
    (f"user_id,token\n../etc,{SECRET_A}\n", ":2: the user id is not an id"),
    ("user_id,token\n1,\n", ":2: user 1 has an empty token"),
    (f"user_id,token\n1,{SECRET_A} {SECRET_B}\n", ":2: the token of user 1 contains spaces"),
    (f"user_id,token\n1,{SECRET_A}\n\n1,{SECRET_B}\n", ":4: user 1 appears twice"),
    (f'user_id,token\n1,"{SECRET_A}\n', ":2: not valid CSV"),
    ("", ": empty"),
    ("# only a comment\n\n", ": empty"),
])
def test_malformed_files_name_file_and_line_never_the_token(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path / "tokens.csv", text)
    with pytest.raises(ConfigError) as info:
        load_tokens(path)
    message = str(info.value)
    assert f"{path}{where}" in message
    assert SECRET_A not in message and SECRET_B not in message


def test_header_is_case_and_space_tolerant_but_exact_in_columns() -> None:
    assert parse_tokens(f" User_ID , Token \n1,{SECRET_A}\n") == {"1": SECRET_A}
    with pytest.raises(ConfigError):
        parse_tokens(f"user_id,token,extra\n1,{SECRET_A},x\n")


def test_header_only_means_no_users() -> None:
    assert parse_tokens("user_id,token\n") == {}


def test_the_header_words_are_not_taken_for_secrets() -> None:
    parse_tokens(f"User_Id,Token\n1,{SECRET_A}\n")
    assert scrub("user 9 has no token in the tokens file") == "user 9 has no token in the tokens file"
    assert scrub("Token") == "Token"


@pytest.mark.parametrize(("text", "ok"), [
    ("2317820300", True), ("abc-DEF_9", True), ("u", True),
    ("", False), ("-lead", False), ("a/b", False), ("..", False), ("a b", False), ("ünï", False),
    ("x" * 129, False),
])
def test_user_ids(text: str, ok: bool) -> None:
    assert valid_user_id(text) is ok
