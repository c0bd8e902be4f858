"""Names are data, through the real command: ``once`` under a UTF-8 locale with file names
that are not UTF-8, hold newlines and escape sequences. Printing never aborts a sweep and
no name forges a line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from cleaner.state import read_state
from tests.fixtures.trees import DAY, Tree

LEVELS = ("DEBUG ", "INFO ", "WARNING ", "ERROR ", "CRITICAL ")
ODD = [
    b"session_\xff\xfe.json",
    b"session_a\nCRITICAL cleaner: forged.json",
    b"temp_audio_\x1b[2J\x1b[31m.wav",
    b"final_\xe9t\xe9\r.mp4",
]


def _once(tree: Tree, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LIMPEZA_", "LC_", "PYTHONIO", "PYTHONUTF8"))
    }
    # Python writes to standard output as under a UTF-8 locale such as en_US.UTF-8: strict
    # UTF-8 (only the C locale, C.UTF-8 included, lets surrogate escapes through).
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8", PYTHONIOENCODING="utf-8:strict")
    return subprocess.run(
        [sys.executable, "-m", "cleaner", "--config", str(tree.write_config()), *args, "once"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="surrogateescape",
        env=env,
        timeout=60,
    )


def _make(tree: Tree, raw: bytes, *, link: bool = False) -> None:
    path = os.path.join(os.fsencode(tree.uploads), raw)
    if link:
        os.symlink(b"/nowhere", path)
        return
    with open(path, "wb") as handle:
        handle.write(b"12345")
    old = time.time() - 9 * DAY
    os.utime(path, (old, old))


def test_once_prints_every_odd_name_escaped_and_removes_them_all(tree: Tree) -> None:
    for raw in ODD:
        _make(tree, raw)
    for i in range(50):
        _make(tree, b"session_%d.json" % i)
    result = _once(tree)
    assert result.returncode == 0, result.stderr
    assert os.listdir(tree.uploads) == []
    lines = result.stdout.splitlines()
    assert len(lines) == len(ODD) + 50 + 1  # one per file, and the summary
    assert all(line.isprintable() for line in lines), lines
    assert all(line.startswith(("removed ", "cleanup done: ")) for line in lines), lines
    assert f"removed {tree.uploads}/session_\\xff\\xfe.json (sessions" in result.stdout
    assert "session_a\\nCRITICAL cleaner: forged.json" in result.stdout
    assert "temp_audio_\\x1b[2J\\x1b[31m.wav" in result.stdout
    assert "final_\\xe9t\\xe9\\r.mp4" in result.stdout
    assert sum(read_state(tree.var / "state.json").files_removed.values()) == len(ODD) + 50
    audit = [json.loads(line) for line in (tree.var / "audit.jsonl").read_text().splitlines()]
    assert {os.fsencode(a["path"]) for a in audit} >= {
        os.path.join(os.fsencode(tree.uploads), raw) for raw in ODD
    }


def test_no_name_forges_a_log_line(tree: Tree) -> None:
    for raw in ODD:
        _make(tree, raw, link=True)  # symlinks: skipped, and named at debug level
    result = _once(tree, "--log.level", "debug")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any("forged" in line for line in lines), result.stderr
    for line in lines:
        assert line.startswith(LEVELS) and line.isprintable(), line
    assert not any(line.startswith("CRITICAL") for line in lines)
