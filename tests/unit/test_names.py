"""Names are data: escaped on every line logged or printed, whatever bytes they hold."""

from __future__ import annotations

import logging
import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cleaner.files import sweep
from cleaner.report import format_removal, printable
from cleaner.sweep_result import Removal
from tests.fixtures.trees import DAY, NOW, Tree

#: Names as os.listdir gives them: any characters, and bytes that are not UTF-8 held as
#: surrogate escapes (U+DC80 to U+DCFF).
names = st.text(
    alphabet=st.one_of(
        st.characters(exclude_categories=["Cs"]),
        st.sampled_from("\n\r\t\\\x1b\x00\x7f\x85\u2028\u202e"),
        st.integers(0x80, 0xFF).map(lambda b: chr(0xDC00 + b)),
    )
)


def _unescape(text: str) -> str:
    """The inverse of printable(), to show that it loses nothing."""

    def one(match: re.Match[str]) -> str:
        escape = match.group(0)
        if escape[1] in "nrt\\":
            return {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}[escape[1]]
        code = int(escape[2:], 16)
        if escape[1] == "x" and code >= 0x80:
            return chr(0xDC00 + code)
        return chr(code)

    return re.sub(r"\\(?:[nrt\\]|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})", one, text)


@given(names)
def test_printable_is_one_printable_line_and_loses_nothing(name: str) -> None:
    shown = printable(name)
    assert shown.isprintable()
    shown.encode("utf-8")  # never a surrogate: printing cannot fail on it
    assert _unescape(shown) == name


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("session_a.json", "session_a.json"),
        ("sessão_ü.json", "sessão_ü.json"),
        ("a\nCRITICAL forged", "a\\nCRITICAL forged"),
        (os.fsdecode(b"session_\xff\xfe.json"), "session_\\xff\\xfe.json"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("a\\nb", "a\\\\nb"),
        ("\u202egnp.exe", "\\u202egnp.exe"),
        ("\x85", "\\u0085"),
    ],
)
def test_printable_examples(name: str, shown: str) -> None:
    assert printable(name) == shown


def test_a_removed_file_is_printed_escaped() -> None:
    path = "/up/" + os.fsdecode(b"session_\n\xff.json")
    line = format_removal(Removal("sessions", path, 3, 2 * DAY, NOW), dry_run=False)
    assert line == "removed /up/session_\\n\\xff.json (sessions, 3 B, 2d old)"


def _odd(tree: Tree, raw: bytes, *, link: bool = False) -> None:
    path = os.path.join(os.fsencode(tree.uploads), raw)
    if link:
        os.symlink(b"/nowhere", path)
        return
    with open(path, "wb") as handle:
        handle.write(b"x")
    os.utime(path, (NOW - 9 * DAY, NOW - 9 * DAY))


def test_no_name_forges_a_log_line(tree: Tree, caplog: pytest.LogCaptureFixture) -> None:
    _odd(tree, b"session_a\nCRITICAL cleaner: forged.json", link=True)
    _odd(tree, b"session_\xff\nERROR x.json", link=True)
    caplog.set_level(logging.DEBUG, logger="cleaner")
    result = sweep(tree.config().files, now=NOW)
    assert result.skipped["symlink"] == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("forged" in m for m in messages)  # the details are there, at debug level
    for message in messages:
        assert message.isprintable(), message


def test_a_report_that_fails_does_not_abort_the_sweep(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(5):
        tree.file(f"session_{i}.json", age=9 * DAY)
    seen: list[str] = []

    def on_remove(removal: Removal) -> None:
        seen.append(removal.path)
        if len(seen) % 2:
            raise BrokenPipeError(32, "Broken pipe")

    result = sweep(tree.config().files, now=NOW, on_remove=on_remove)
    assert tree.names() == set()
    assert result.files_removed == 5
    assert result.errors == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "the sweep goes on" in errors[0].getMessage()
