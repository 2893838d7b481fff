"""syncer.redact: the one home of every scrubbing and escaping rule, and the one URL rule (config.url_refusal)."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from syncer import logs
from syncer.config import url_refusal
from syncer.redact import (
    escape,
    is_terminal_safe,
    json_text,
    redact_link,
    redact_url,
    register_secret,
    scrub,
    without_name,
)

# -- escaping --------------------------------------------------------------------------------------------

UNSAFE = (
    [chr(c) for c in range(0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]
    + ["\u061c", "\u200e", "\u200f", "\u2028", "\u2029"] + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)] + ["\ud800", "\udfff"]
)


@pytest.mark.parametrize("char", UNSAFE, ids=[f"U+{ord(c):04X}" for c in UNSAFE])
def test_every_character_a_terminal_acts_on_becomes_a_visible_escape(char: str) -> None:
    out = escape(f"a{char}b")
    assert out.isprintable() and out.isascii() and out.startswith("a\\") and out.endswith("b")
    assert not is_terminal_safe(char) and is_terminal_safe(out)
    out.encode("utf-8")  # a lone surrogate would not even encode for output


def test_escape_forms_and_what_it_keeps() -> None:
    assert escape("x\r\ny\t\x1b[2J\x9b31m\u202eexe") == "x\\r\\ny\\t\\x1b[2J\\x9b31m\\u202eexe"
    kept = "Café – 日本語 📄 résumé (1).pdf \\ back"
    assert escape(kept) == kept and is_terminal_safe(kept)
    assert escape(escape("\x1b\u202e")) == escape("\x1b\u202e")  # idempotent
    assert escape(None) == "" and escape(42) == "42"


def test_json_output_is_ascii_and_round_trips() -> None:
    doc = {"id": "a\u202eb\x9b\x1b\u2028", "name": "é"}
    text = json_text(doc, indent=2)
    assert text.isascii() and "\\u202e" in text and "\\u009b" in text
    assert json.loads(text) == doc


# -- secrets ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "GET https://h.example/files/view/1?auth_code=abc&time=1 -> 403",
    "link http://127.0.0.1:8/x#auth_code=abc",
    "form auth_code=abc&time=1",
    "token=abc", "api_key=abc", "apikey=abc", "X-ApiToken=abc", "access_token=abc", "APITOKEN=abc",
    "header {'X-ApiToken': 'abc'}",
])
def test_scrub_one_list_for_urls_params_and_headers(text: str) -> None:
    assert "abc" not in scrub(text)


def test_scrub_masks_registered_secrets_and_leaves_ordinary_text() -> None:
    secret = "s3cr3t-token-value-0123456789"
    register_secret(secret)
    assert scrub(f"bad token {secret}!") == "bad token <redacted>!"
    register_secret("short")  # too short to mask safely: ordinary words would go
    assert scrub("a short note") == "a short note"
    plain = "user 9 has no token in the tokens file (Token)"
    assert scrub(plain) == plain


@pytest.mark.parametrize("text", ["a" * 100_000, "a." * 50_000, "http://" + "a" * 100_000, "x=" * 50_000])
def test_scrub_takes_linear_time_on_long_words(text: str) -> None:
    """Every log record passes through scrub: a long run of word characters in a foreign exception's text
    must not be rescanned from every position (it took 6 s for 10,000 characters)."""
    started = time.perf_counter()
    scrub(text)
    assert time.perf_counter() - started < 0.5


def test_redact_url_keeps_host_and_path_only() -> None:
    assert redact_url("https://u:p@h.example:8443/files/view/9?auth_code=x#f") == "https://h.example:8443/files/view/9"
    assert redact_url("http://[::1") == "<unparseable url>"


def test_redact_link_keeps_only_where_a_server_given_link_points() -> None:
    link = "https://bucket.s3.example/clinic/Mary%20Major%20staging.pdf?X-Amz-Signature=abc"
    assert redact_link(link) == "https://bucket.s3.example/…"
    assert redact_link("http://u:p@127.0.0.1:8080/files/view/9?auth_code=x") == "http://127.0.0.1:8080/…"
    assert redact_link("/relative/only") == "<unusable url>"


def test_without_name_takes_every_form_of_the_name_out() -> None:
    name = "Mary Major cancer staging.pdf"
    text = f"'{name}' was removed; see MARY MAJOR CANCER STAGING and {name.replace(' ', '%20')}"
    out = without_name(text, name, name.replace(" ", "%20"))
    assert "Mary" not in out and "MARY" not in out and out.count("<file name>") == 3
    nfd = "Cafe\u0301 note.txt"
    assert without_name("Café note.txt is gone", nfd) == "<file name> is gone"
    assert without_name("a b c", "b") == "a b c"  # too short to take out safely


# -- the log formats -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["text", "json"])
def test_one_record_is_one_clean_line_in_either_format(fmt: str) -> None:
    stream = io.StringIO()
    logger = logging.getLogger("syncer")
    level, propagate = logger.level, logger.propagate
    handler = logs.setup(fmt, "debug", stream=stream)
    try:
        hostile = "id\r\n2026-01-01 00:00:00 ERROR forged\x1b[2J\x9b\u202e"
        logs.event(logging.getLogger("syncer.test"), "failed", level=logging.WARNING,
                   message=f"file {hostile}: refused", file_id=hostile)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    out = stream.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n") and out[:-1].isprintable()
    if fmt == "json":
        assert out.isascii() and json.loads(out)["file_id"] == hostile
    else:
        assert "file_id=id\\r\\n2026-01-01" in out and "\\x1b[2J\\x9b\\u202e" in out


# -- the one URL rule ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "refused"), [
    ("https://files.example/api_v3", None),
    ("https://localhost/x", None),
    ("http://127.0.0.1:8080/api_v3", None),
    ("http://127.0.0.2/x", None),
    ("http://127.255.255.254/x", None),
    ("http://[::1]:9/x", None),
    ("http://localhost:8080/x", "plain http"),
    ("http://LOCALHOST/x", "plain http"),
    ("http://example.invalid/x", "plain http"),
    ("http://10.0.0.1/x", "plain http"),
    ("http://0.0.0.0/x", "plain http"),
    ("http://[::ffff:127.0.0.1]/x", "plain http"),
    ("http://127.0.0.1.nip.io/x", "plain http"),
    ("HTTP://example.invalid/x", "plain http"),
    ("ftp://127.0.0.1/x", "not an http(s) URL"),
    ("http:///nohost", "not an http(s) URL"),
    ("http://[::1/x", "not a valid URL"),
])
def test_url_refusal(url: str, refused: str | None) -> None:
    reason = url_refusal(url)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason
