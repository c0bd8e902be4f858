"""Log volume: a sweep says what it skipped in its one summary line, per reason; each
skipped entry is named at debug level only. 20,000 matching symlinks made 80,000 lines."""

from __future__ import annotations

import fcntl
import logging
import os

import pytest

from cleaner.files import sweep
from cleaner.memory import SweepMemory
from tests.fixtures.trees import DAY, NOW, Tree

LINKS = 2000


def test_skipped_entries_are_counted_in_the_summary_and_named_at_debug_only(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(LINKS):
        (tree.uploads / f"session_{i}.json").symlink_to("/nowhere")
    pinned = tree.file("temp_audio_pinned.wav", age=9 * DAY)
    files = tree.config().files
    memory = SweepMemory()
    fd = os.open(pinned, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # another open file description: a real pin
        caplog.set_level(logging.INFO, logger="cleaner")
        results = [sweep(files, now=NOW + n, memory=memory) for n in range(3)]
        assert [r.getMessage() for r in caplog.records] == []
        caplog.clear()
        caplog.set_level(logging.DEBUG, logger="cleaner")
        sweep(files, now=NOW)
    finally:
        os.close(fd)
    for result in results:
        assert result.skipped["symlink"] == LINKS
        assert result.skipped["locked"] == 1
        assert "skipped: locked 1, symlink 2000" in result.summary()
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert sum("skipping symlink" in m for m in debug) == LINKS
    assert sum("locked by another process" in m for m in debug) == 1
