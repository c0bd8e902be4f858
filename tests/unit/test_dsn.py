"""DSN hygiene: hostile passwords never show, whole or in pieces, in a mask or an error.

A password's "fragment" is any 3 characters of it in a row: every output is checked for all
of them. The passwords are built so that no fragment occurs in ordinary output (upper-case
Q, Z, X, J, V, K and non-ASCII letters in every 3 characters).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import psycopg2
import psycopg2.extensions
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cleaner import cli
from cleaner import dsn as dsn_mod
from cleaner.config import ConfigError, DatabaseConfig, build
from cleaner.jobs.connection import DatabaseDownError, connect, describe_error, mask_dsn

#: Nothing listens on port 1 of the loopback: libpq fails at once, with its own words.
CLOSED = "127.0.0.1:1"

PASSWORDS = {
    "at": "QZ@XJ9-KV7",
    "two-ats": "QZ@XJ@KV7",
    "slash": "QZ/XJ9-KV7",
    "colon": "QZ:XJ9:KV7",
    "space": "QZ XJ9 KV7",
    "percent": "QZ%XJ9%KV7",
    "percent-hex": "QZ%41XJ9KV",
    "quotes": "QZ'XJ9\"KV7",
    "backslash": "QZ\\XJ9\\KV7",
    "question-hash": "QZ?XJ9#KV7",
    "ampersand-equals": "QZ&XJ=9KV7",
    "unicode": "QZßXJ漢9KVé",
    "everything": "QZ @/:%'\"\\?#&=ßXJ漢KV",
}


def fragments(secret: str) -> set[str]:
    """Every 3 characters in a row of ``secret`` (the secret itself when shorter)."""
    if len(secret) < 3:
        return {secret}
    return {secret[i : i + 3] for i in range(len(secret) - 2)}


def assert_no_fragment(text: str, secret: str) -> None:
    found = sorted(f for f in fragments(secret) if f in text)
    assert not found, f"pieces {found} of the password in: {text!r}"


def kv_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def hostile_dsns(password: str) -> Iterator[tuple[str, str]]:
    """(form, DSN) for one password: as it is, encoded or quoted, in every place it goes."""
    encoded = quote(password, safe="")
    yield "url-raw", f"postgresql://app:{password}@{CLOSED}/app"
    yield "url-encoded", f"postgresql://app:{encoded}@{CLOSED}/app"
    yield "url-query-raw", f"postgresql://app@{CLOSED}/app?sslmode=disable&password={password}"
    yield "url-query-encoded", f"postgresql://app@{CLOSED}/app?password={encoded}&sslmode=disable"
    yield "kv-raw", f"host=127.0.0.1 port=1 user=app password={password} dbname=app"
    yield "kv-quoted", f"host=127.0.0.1 port=1 user=app password={kv_quote(password)} dbname=app"
    yield "kv-quote-unclosed", f"host=127.0.0.1 port=1 user=app dbname=app password='{password}"


CASES = [
    pytest.param(password, form, dsn, id=f"{name}-{form}")
    for name, password in PASSWORDS.items()
    for form, dsn in hostile_dsns(password)
]


def database(dsn: str) -> DatabaseConfig:
    """The default jobs.database section with ``dsn``, which the config might refuse."""
    base = build({"jobs": {"database": {"connect_timeout": "2s"}}}, env={}).jobs.database
    assert base is not None
    return replace(base, dsn=dsn)


@pytest.mark.parametrize(("password", "form", "dsn"), CASES)
def test_no_piece_of_the_password_in_the_mask_nor_any_error(
    password: str, form: str, dsn: str
) -> None:
    texts = [mask_dsn(dsn), dsn_mod.mask(dsn)]
    try:
        parsed = dsn_mod.parse(dsn)
    except dsn_mod.DsnError as exc:
        texts += [str(exc), exc.masked, dsn_mod.problem(dsn) or ""]
    else:
        texts.append(repr(parsed))
    # What libpq itself says of it, scrubbed as every database error is.
    try:
        psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error as exc:
        texts.append(describe_error(exc, database(dsn)))
    # The whole connect: refused before libpq, or libpq's own failure, scrubbed.
    with pytest.raises(DatabaseDownError) as down:
        connect(database(dsn), application_name="limpeza test")
    texts.append(str(down.value))
    # The configuration and check-config.
    try:
        build({"jobs": {"database": {}}}, env={"LIMPEZA_DATABASE_URL": dsn})
    except ConfigError as exc:
        texts.append(str(exc))
    for text in texts:
        assert_no_fragment(text, password)


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        (
            "postgresql://app:QZ@XJ9@db:5432/app",
            "the URL's user info holds an unencoded '@'; percent-encode it as %40",
        ),
        (
            "postgresql://app:QZ/XJ9@db:5432/app",
            "the URL's user info holds an unencoded '/'; percent-encode it as %2F",
        ),
        (
            "postgresql://app:QZ?X/J9@db:5432/app",
            "the URL's user info holds an unencoded '/'; percent-encode it as %2F",
        ),
        (
            "postgresql://app:1234/5678@db:5432/app",  # host "app", port 1234 to libpq
            "the URL's user info holds an unencoded '/'; percent-encode it as %2F",
        ),
        ("postgresql://app:QZ%XJ9@db:5432/app", "percent-encode '%' itself as %25"),
        ("postgresql://app:QZXJ9:db:5432/app", "the URL's port is not a number"),
        ("postgresql://app:QZ@[::1/app", "'[' without its ']'"),
        ("postgresql+psycopg2://app:QZXJ9@db/app", "must start with postgresql://"),
        (" postgresql://app:QZXJ9@db/app", "starts with whitespace"),
        ("postgresql://db/app?sslmod=require", "unknown parameter 'sslmod'"),
        ("postgresql://db/app?password=QZ&XJ9=1", "right after a password"),
        ("host=db password=QZ XJ9", "a word without '=' right after a password's value"),
        ("host=db password=QZ XJ9=KV", "an unknown key right after a password's value"),
        ("host=db password='QZ XJ9", "the value of 'password' has a ' without its closing '"),
        ("host=db sslmod=require", "unknown key 'sslmod'"),
        ("host=db user=app QZXJ9", "a word without '=' after the value of 'user'"),
        ("QZXJ9KV", "neither a postgresql:// URL nor key=value pairs"),
    ],
)
def test_a_malformed_dsn_is_refused_with_what_is_wrong(dsn: str, problem: str) -> None:
    with pytest.raises(dsn_mod.DsnError) as caught:
        dsn_mod.parse(dsn)
    assert problem in str(caught.value)
    for text in (str(caught.value), caught.value.masked):
        assert "QZ" not in text and "XJ9" not in text and "5678" not in text


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://app:QZ@XJ9@db:5432/app", "postgresql://***@db:5432/app"),
        (
            "postgresql://app:QZ/XJ9@db:5432/app?sslmode=require",
            "postgresql://***@db:5432/app?sslmode=require",
        ),
        ("postgresql://app:QZ%40XJ9@db:5432/app", "postgresql://***@db:5432/app"),
        ("postgres://app@db/app", "postgres://***@db/app"),
        ("postgresql://db/app?user=app&password=QZ", "postgresql://db/app?user=app&password=***"),
        ("postgresql://app:QZXJ9:db:5432/app", "postgresql://***/app"),
        ("postgresql://h1:5432,h2:5433/app", "postgresql://h1:5432,h2:5433/app"),
        ("host=db password='QZ XJ9' dbname=app", "host=db password=*** dbname=app"),
        ("host=db password=QZ XJ9 dbname=app", "host=db password=*** ..."),
        ("host=db dbname=app password='QZ XJ9", "host=db dbname=app ..."),
    ],
)
def test_the_mask_keeps_only_what_was_read_as_host_port_and_database(dsn: str, masked: str) -> None:
    assert dsn_mod.mask(dsn) == masked


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:QZ%40XJ%2F9@db.example:5432/app",
        "postgresql://app:QZ XJ?9#KV@db.example/app",  # libpq reads these as meant
        "postgresql://app:QZ:XJ9@[::1]:5432/app?sslmode=require&application_name=a%40b",
        "postgresql://h1,h2:5433/app?ssl=true",
        "postgresql://h/app?application_name=a@b",
        "postgresql://",
        "postgres:///app",
        "host=db port=5432 user=app password='QZ \\'XJ9\\\\' dbname=app",
        "host = db password=QZ\\ XJ9 dbname=app",
        "password='a'host=db",
        "",
    ],
)
def test_what_libpq_reads_as_meant_is_read_the_same(dsn: str) -> None:
    assert dsn_mod.parse(dsn).params == psycopg2.extensions.parse_dsn(dsn)


PASSWORD_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


@given(st.text(PASSWORD_CHARS, min_size=1, max_size=24))
def test_a_raw_url_password_is_read_as_meant_or_refused(password: str) -> None:
    """Never accepted and misread: what is accepted, libpq reads as the same password."""
    dsn = f"postgresql://app:{password}@db.example:5432/app"
    try:
        parsed = dsn_mod.parse(dsn)
    except dsn_mod.DsnError as exc:
        assert "@" in password or "/" in password or "%" in password, exc
        assert str(exc).startswith("the URL's "), exc
        assert exc.masked in ("postgresql://***@db.example:5432/app", "postgresql://***")
        return
    assert "@" not in password and "/" not in password
    try:
        libpq = psycopg2.extensions.parse_dsn(dsn)
    except UnicodeDecodeError:
        return  # percent-encoded bytes that are no UTF-8: libpq takes them, Python cannot
    assert parsed.params == libpq
    assert parsed.params["host"] == "db.example"
    assert parsed.masked == "postgresql://***@db.example:5432/app"


@given(st.text(PASSWORD_CHARS, min_size=1, max_size=24))
def test_an_encoded_or_quoted_password_is_always_read_as_meant(password: str) -> None:
    for dsn, masked in (
        (
            f"postgresql://app:{quote(password, safe='')}@db:5432/app",
            "postgresql://***@db:5432/app",
        ),
        (
            f"postgresql://app@db/app?password={quote(password, safe='')}",
            "postgresql://***@db/app?password=***",
        ),
        (
            f"host=db user=app password={kv_quote(password)} dbname=app",
            "host=db user=app password=*** dbname=app",
        ),
    ):
        parsed = dsn_mod.parse(dsn)
        assert parsed.params == psycopg2.extensions.parse_dsn(dsn)
        assert parsed.params["password"] == password
        assert parsed.masked == masked


def test_scrub_removes_the_password_raw_and_decoded() -> None:
    dsn = "postgresql://app:QZ%40XJ9%20KV@db/app"
    text = f"failed for QZ@XJ9 KV (sent QZ%40XJ9%20KV) on {dsn}"
    scrubbed = dsn_mod.scrub(text, dsn)
    assert_no_fragment(scrubbed, "QZ@XJ9 KV")
    assert "postgresql://***@db/app" in scrubbed


def test_scrub_removes_the_pieces_of_a_malformed_user_info() -> None:
    dsn = "postgresql://app:QZX@JVK/XQZ@db:5432/app"
    # What libpq would have said of it (host "JVK", database "XQZ@db:5432/app").
    libpq = 'could not translate host name "JVK" to address; database "XQZ@db:5432/app"'
    assert_no_fragment(dsn_mod.scrub(libpq, dsn), "QZX@JVK/XQZ")


def test_describe_error_scrubs_a_password_split_across_lines() -> None:
    dsn = "host=db password='QZ\nXJ9  KV7'"
    text = describe_error(RuntimeError("echo QZ\nXJ9  KV7 back"), database(dsn))
    assert_no_fragment(text, "QZ XJ9 KV7")
    assert "QZ" not in text


def test_check_config_reports_a_malformed_dsn_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "limpeza.yml"
    config.write_text("jobs:\n  database: {table: jobs}\n", encoding="utf-8")
    password = PASSWORDS["everything"]
    env = {"LIMPEZA_DATABASE_URL": f"postgresql://app:{password}@db:5432/app"}
    assert cli.main(["check-config", str(config)], env=env) == 2
    out = capsys.readouterr()
    assert "LIMPEZA_DATABASE_URL: the URL's user info holds an unencoded '@'" in out.err
    assert "postgresql://***@db:5432/app" in out.err
    assert_no_fragment(out.out + out.err, password)
    fine = {"LIMPEZA_DATABASE_URL": f"postgresql://app:{quote(password, safe='')}@db/app"}
    assert cli.main(["check-config", str(config)], env=fine) == 0


DSN_PIECES = st.sampled_from(
    [
        *"@/:%?#&= '\"\\ab1Q,[]ß\t",
        *("host=", "password=", "user=", "dbname=", "sslmode=", "x=y", "ssl=true"),
        *("%40", "%2F", "localhost", "5432"),
    ]
)
DSN_STARTS = st.sampled_from(["postgresql://", "postgres://", "postgresql://app:", "host=db ", ""])


@given(DSN_STARTS, st.lists(DSN_PIECES, max_size=12))
def test_what_is_accepted_libpq_reads_the_same_and_nothing_raises(
    start: str, pieces: list[str]
) -> None:
    dsn = start + "".join(pieces)
    dsn_mod.mask(dsn)
    dsn_mod.scrub(f"text around {dsn} and more", dsn)
    try:
        parsed = dsn_mod.parse(dsn)
    except dsn_mod.DsnError:
        return
    try:
        libpq = psycopg2.extensions.parse_dsn(dsn)
    except UnicodeDecodeError:
        return  # percent-encoded bytes that are no UTF-8: libpq takes them, Python cannot
    assert parsed.params == libpq


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("http://127.0.0.1:8000/health", "http://127.0.0.1:8000/health"),
        ("http://api:s3cret@127.0.0.1:8000/health", "http://***@127.0.0.1:8000/health"),
        ("https://token@api.example/health?x=1", "https://***@api.example/health?x=1"),
        # A careless password: the '@', '/' or '#' a parser would stop at stays masked.
        ("http://api:s3@cr/et#x@127.0.0.1/health", "http://***@127.0.0.1/health"),
        ("ftp://api:s3cret@host/health", "ftp://***@host/health"),
        ("api:s3cret@host/health", "***@host/health"),
    ],
)
def test_mask_url_hides_the_whole_user_info(url: str, masked: str) -> None:
    assert dsn_mod.mask_url(url) == masked


@given(st.text(min_size=3), st.text())
def test_mask_url_never_shows_a_piece_of_the_user_info(userinfo: str, rest: str) -> None:
    rest = rest.replace("@", "")
    shown = dsn_mod.mask_url(f"http://{userinfo}@{rest}")
    assert shown == f"http://***@{rest}"
