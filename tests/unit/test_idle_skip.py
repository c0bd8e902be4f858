"""The daemon's sweep memory: unchanged directories go unread, and nothing is ever missed
except what the documented bound allows (a full read at least every
``files.full_read_every``)."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from cleaner.config import FilesConfig, Rule
from cleaner.files import SweepHooks, sweep
from cleaner.memory import SweepMemory

DAY = 86_400.0
NOW = time.time()


def _config(root: Path, *, recursive: bool = False, max_age: float = DAY) -> FilesConfig:
    rules = (
        Rule("sessions", "session_*.json", max_age, (root,), recursive),
        Rule("final_videos", "final_*.mp4", max_age, (root,), recursive),
    )
    return FilesConfig((root,), ("original_*",), rules, ())


def _file(directory: Path, name: str, age: float, size: int = 3) -> Path:
    path = directory / name
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age, NOW - age))
    return path


def _settle(*directories: Path) -> None:
    """Dates directories a minute back, as if nothing had touched them lately."""
    for directory in directories:
        os.utime(directory, (NOW - 60, NOW - 60))


class Reads(list[str]):
    """The directories read (listed) by the sweeps given ``hooks``, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks = SweepHooks(before_read=self.append)


@pytest.fixture
def reads() -> Reads:
    return Reads()


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    root = tmp_path / "uploads"
    root.mkdir()
    _file(root, "session_a.json", age=3600)
    _file(root, "final_a.mp4", age=7200, size=10)
    _file(root, "original_a.mp4", age=9 * DAY, size=100)
    _file(root, "notes.txt", age=9 * DAY, size=5)
    _settle(root)
    return root


def test_nothing_changed_directory_is_not_read_again(uploads: Path, reads: Reads) -> None:
    config, memory = _config(uploads), SweepMemory()
    first = sweep(config, now=NOW, memory=memory, hooks=reads.hooks)
    second = sweep(config, now=NOW + 30, memory=memory, hooks=reads.hooks)
    assert len(reads) == 1  # only the first sweep read the directory
    assert memory.reused == 1
    assert first.files_removed == second.files_removed == 0
    usage = second.directories[str(uploads)]
    assert (usage.files, usage.bytes) == (4, 3 + 10 + 100 + 5)


def test_new_file_in_remembered_directory_is_found(uploads: Path, reads: Reads) -> None:
    config, memory = _config(uploads), SweepMemory()
    sweep(config, now=NOW, memory=memory, hooks=reads.hooks)
    late = _file(uploads, "session_late.json", age=9 * DAY)  # the directory's mtime moves
    result = sweep(config, now=NOW + 30, memory=memory, hooks=reads.hooks)
    assert not late.exists()
    assert result.removed["sessions"].files == 1
    assert len(reads) == 2


def test_expiry_reached_in_unchanged_directory_is_found(uploads: Path, reads: Reads) -> None:
    config, memory = _config(uploads), SweepMemory()
    sweep(config, now=NOW, memory=memory, hooks=reads.hooks)
    sweep(config, now=NOW + 60, memory=memory, hooks=reads.hooks)
    assert len(reads) == 1
    # final_a.mp4 (2 h old) reaches 24 h first; the directory itself never changed.
    result = sweep(config, now=NOW + DAY - 7200 + 1, memory=memory, hooks=reads.hooks)
    assert len(reads) == 2
    assert result.removed["final_videos"].files == 1
    assert not (uploads / "final_a.mp4").exists()
    assert (uploads / "session_a.json").exists()


def test_usage_of_a_skipped_directory_matches_a_full_read(uploads: Path) -> None:
    config, memory = _config(uploads), SweepMemory()
    sweep(config, now=NOW, memory=memory)
    remembered = sweep(config, now=NOW + 30, memory=memory)
    fresh = sweep(config, now=NOW + 30)
    assert memory.reused == 1
    assert remembered.directories == fresh.directories
    assert remembered.skipped == fresh.skipped


def test_directory_with_removals_is_read_again_next_cycle(uploads: Path, reads: Reads) -> None:
    _file(uploads, "session_old.json", age=9 * DAY)
    _settle(uploads)
    config, memory = _config(uploads), SweepMemory()
    assert sweep(config, now=NOW, memory=memory, hooks=reads.hooks).files_removed == 1
    _settle(uploads)  # the next cycle comes 30 s later
    assert sweep(config, now=NOW + 30, memory=memory, hooks=reads.hooks).files_removed == 0
    assert len(reads) == 2  # removing changed the directory: read again, then remembered
    usage = sweep(config, now=NOW + 60, memory=memory, hooks=reads.hooks).directories[str(uploads)]
    assert len(reads) == 2
    assert (usage.files, usage.bytes) == (4, 118)


def test_recently_changed_directory_is_not_remembered(uploads: Path, reads: Reads) -> None:
    os.utime(uploads)  # modified just now: a change in the same clock tick could hide
    config, memory = _config(uploads), SweepMemory()
    sweep(config, now=NOW, memory=memory, hooks=reads.hooks)
    sweep(config, now=NOW + 30, memory=memory, hooks=reads.hooks)
    assert len(reads) == 2


def test_change_in_a_subdirectory_is_found_under_an_unchanged_parent(
    tmp_path: Path, reads: Reads
) -> None:
    root = tmp_path / "uploads"
    leaf = root / "a" / "b"
    leaf.mkdir(parents=True)
    _file(leaf, "session_a.json", age=3600)
    _settle(leaf, leaf.parent, root)
    config, memory = _config(root, recursive=True), SweepMemory()
    sweep(config, now=NOW, memory=memory, hooks=reads.hooks)
    sweep(config, now=NOW + 30, memory=memory, hooks=reads.hooks)
    assert len(reads) == 3  # root, a and a/b once each
    assert memory.reused == 3
    stale = _file(leaf, "final_b.mp4", age=9 * DAY)
    result = sweep(config, now=NOW + 60, memory=memory, hooks=reads.hooks)
    assert not stale.exists()
    assert result.removed["final_videos"].files == 1
    assert len(reads) == 4  # only a/b was read again
    assert reads[-1] == str(leaf)


def test_mtime_set_back_is_removed_by_the_next_full_read(uploads: Path) -> None:
    """The documented bound: a file aged in place (the directory untouched) waits at most
    ``files.full_read_every``, measured on the monotonic clock the memory is given."""
    elapsed = [0.0]
    config = replace(_config(uploads), full_read_every=90.0)
    memory = SweepMemory(clock=lambda: elapsed[0])
    sweep(config, now=NOW, memory=memory)  # a full read at 0 s
    aged = uploads / "final_a.mp4"
    os.utime(aged, (NOW - 9 * DAY, NOW - 9 * DAY))
    for elapsed[0] in (30.0, 60.0, 89.0):  # the directory's mtime says nothing changed
        assert sweep(config, now=NOW + elapsed[0], memory=memory).files_removed == 0
    elapsed[0] = 90.0
    assert sweep(config, now=NOW + 90, memory=memory).files_removed == 1  # full read
    assert not aged.exists()


def test_full_read_every_zero_reads_every_directory_at_every_sweep(
    uploads: Path, reads: Reads
) -> None:
    config = replace(_config(uploads), full_read_every=0.0)
    memory = SweepMemory(clock=lambda: 0.0)
    for cycle in range(3):
        sweep(config, now=NOW + 30 * cycle, memory=memory, hooks=reads.hooks)
    assert len(reads) == 3
    assert memory.reused == 0


def test_new_configuration_forgets_what_was_remembered(uploads: Path, reads: Reads) -> None:
    memory = SweepMemory()
    sweep(_config(uploads), now=NOW, memory=memory, hooks=reads.hooks)
    result = sweep(_config(uploads, max_age=60), now=NOW + 30, memory=memory, hooks=reads.hooks)
    assert len(reads) == 2
    assert result.files_removed == 2


def test_dry_run_and_max_age_do_not_use_the_memory(uploads: Path, reads: Reads) -> None:
    config, memory = _config(uploads), SweepMemory()
    sweep(config, now=NOW, memory=memory, hooks=reads.hooks)
    dry = sweep(config, now=NOW + 30, memory=memory, dry_run=True, hooks=reads.hooks)
    assert dry.files_removed == 0
    forced = sweep(config, now=NOW + 30, memory=memory, max_age=0, hooks=reads.hooks)
    assert forced.files_removed == 2
    assert len(reads) == 3
