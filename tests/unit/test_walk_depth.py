"""A directory chain deeper than the walk's limit: counted and left, the other roots swept.

Anyone who may ``mkdir`` in an uploads tree can make a chain a thousand levels deep; a
recursive walk died of RecursionError there and the roots after it were never cleaned.
"""

from __future__ import annotations

import logging
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleaner.files import MAX_DEPTH, TOO_DEEP, sweep
from tests.fixtures.trees import DAY, NOW, Tree, make_file

CHAIN = 1000


def _chain(top: Path, depth: int, *, file_at: tuple[int, ...] = ()) -> None:
    """``depth`` nested directories ``d`` under ``top`` (made through directory descriptors:
    the path would pass PATH_MAX), with an expired session file at each level in ``file_at``.
    """
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(1, depth + 1):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            if level in file_at:
                file_fd = os.open("session_deep.json", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
                os.close(file_fd)
                os.utime("session_deep.json", (NOW - 9 * DAY,) * 2, dir_fd=fd)
    finally:
        os.close(fd)


def _remove_chain(top: Path) -> None:
    """Removes the chain under ``top`` level by level (rmtree recurses, and fails here)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while "d" in os.listdir(fd):
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            try:
                for name in os.listdir(child):
                    if name == "d":  # lift the rest of the chain one level up
                        os.rename("d", "rest", src_dir_fd=child, dst_dir_fd=fd)
                    else:
                        os.unlink(name, dir_fd=child)
            finally:
                os.close(child)
            os.rmdir("d", dir_fd=fd)
            if "rest" in os.listdir(fd):
                os.rename("rest", "d", src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


@pytest.fixture
def chains() -> Iterator[list[Path]]:
    """Directories whose chains are removed after the test."""
    tops: list[Path] = []
    try:
        yield tops
    finally:
        for top in tops:
            _remove_chain(top)


def _exists_at(top: Path, level: int, name: str) -> bool:
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(level):
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        return name in os.listdir(fd)
    finally:
        os.close(fd)


def _config(tree: Tree, *roots: Path) -> dict[str, object]:
    rule = {"name": "s", "pattern": "session_*", "max_age": "1d", "recursive": True}
    return {"files": {"directories": [str(r) for r in roots], "rules": [rule]}}


def test_a_chain_past_the_limit_is_counted_and_the_next_root_still_swept(
    tree: Tree, chains: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    deep = tree.root / "deep"
    deep.mkdir()
    chains.append(deep)
    _chain(deep, CHAIN, file_at=(1, MAX_DEPTH, MAX_DEPTH + 1, CHAIN))
    after = make_file(tree.uploads / "session_after.json", age=9 * DAY)
    config = tree.config(**_config(tree, deep, tree.uploads))
    caplog.set_level(logging.INFO, logger="cleaner")
    result = sweep(config.files, now=NOW)
    assert not after.exists()  # the root after the deep one was swept
    assert not _exists_at(deep, 1, "session_deep.json")
    assert not _exists_at(deep, MAX_DEPTH, "session_deep.json")  # the last level swept
    assert _exists_at(deep, MAX_DEPTH + 1, "session_deep.json")  # below it: left alone
    assert _exists_at(deep, CHAIN, "session_deep.json")
    assert result.skipped[TOO_DEEP] == 1
    assert result.files_removed == 3
    assert result.errors == 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "too_deep" in warnings[0].getMessage()
    assert f"too_deep {1}" in result.summary()


def test_many_chains_past_the_limit_log_one_warning(
    tree: Tree, chains: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(3):
        top = tree.uploads / f"top{i}"
        top.mkdir()
        chains.append(top)
        _chain(top, MAX_DEPTH + 5)
    config = tree.config(**_config(tree, tree.uploads))
    caplog.set_level(logging.INFO, logger="cleaner")
    result = sweep(config.files, now=NOW)
    assert result.skipped[TOO_DEEP] == 3
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def _peak(tree: Tree, files: int) -> int:
    for i in range(files):
        make_file(tree.uploads / f"keep_{i}.txt", age=0)
    config = tree.config(**_config(tree, tree.uploads))
    tracemalloc.start()
    try:
        sweep(config.files, now=NOW)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_at_the_depth_limit(tree: Tree, chains: list[Path]) -> None:
    """The walk holds one level per depth reached (bounded), nothing per file."""
    chains.append(tree.uploads)
    _chain(tree.uploads, MAX_DEPTH)
    few = _peak(tree, 500)
    many = _peak(tree, 5000)  # 10 times the files, the chain still there
    assert few < 1_000_000, few
    assert many < few * 1.5, (few, many)
