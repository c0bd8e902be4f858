"""Mount points inside a root, told by mount id: real bind mounts, never crossed nor removed.

A bind mount of the same filesystem has the same ``st_dev`` as the directory it is mounted
in; only its mount id (``statx``) or ``/proc/self/mountinfo`` tells it apart.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cleaner.files import sweep
from cleaner.mounts import MountPoints, mount_points_under
from cleaner.sessions import purge_session
from tests.fixtures.trees import DAY, NOW, Tree, make_file

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")

Mount = Callable[[Path, Path], None]


@pytest.fixture
def bind() -> Iterator[Mount]:
    """``bind(source, target)`` bind-mounts; every mount is undone after the test."""
    mounted: list[Path] = []

    def mount(source: Path, target: Path) -> None:
        subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
        mounted.append(target)

    try:
        yield mount
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", str(target)], check=True)


def _recursive(tree: Tree) -> dict[str, object]:
    return {
        "files": {
            "directories": [str(tree.uploads)],
            "rules": [{"name": "s", "pattern": "session_*", "max_age": "1d", "recursive": True}],
        }
    }


def _mounts(by_id: bool, tree: Tree) -> MountPoints:
    mounts = MountPoints.detect((tree.uploads,), use_statx=by_id)
    assert mounts.by_id is by_id
    return mounts


@pytest.mark.parametrize("by_id", [True, False], ids=["statx", "mountinfo"])
def test_a_bind_mount_of_the_same_filesystem_is_not_crossed(
    tree: Tree, bind: Mount, by_id: bool
) -> None:
    elsewhere = tree.root / "elsewhere"
    behind = make_file(elsewhere / "session_behind.json", age=9 * DAY)
    target = tree.uploads / "mnt"
    target.mkdir()
    bind(elsewhere, target)
    assert os.stat(target).st_dev == os.stat(tree.uploads).st_dev  # st_dev cannot tell
    mine = tree.file("session_mine.json", age=9 * DAY)
    config = tree.config(**_recursive(tree))
    result = sweep(config.files, now=NOW, mounts=_mounts(by_id, tree))
    assert behind.exists() and (target / "session_behind.json").exists()
    assert not mine.exists()
    assert result.skipped["mount_point"] == 1
    assert result.errors == 0
    assert result.files_removed == 1


@pytest.mark.parametrize("by_id", [True, False], ids=["statx", "mountinfo"])
def test_a_file_bind_mounted_onto_a_matching_name_is_never_removed(
    tree: Tree, bind: Mount, by_id: bool
) -> None:
    source = make_file(tree.root / "keep.json", age=9 * DAY, data=b"keep me")
    target = tree.file("session_mounted.json", age=9 * DAY)
    bind(source, target)
    config = tree.config()
    for dry_run in (True, False):
        result = sweep(config.files, now=NOW, dry_run=dry_run, mounts=_mounts(by_id, tree))
        assert result.files_removed == 0, dry_run
        assert result.skipped["mount_point"] == 1
        assert result.errors == 0
    assert target.read_bytes() == b"keep me"


def test_purge_session_leaves_a_mount_point_alone(tree: Tree, bind: Mount) -> None:
    source = make_file(tree.root / "keep.json", age=9 * DAY, data=b"keep me")
    target = tree.file("session_s1.json", age=9 * DAY)
    bind(source, target)
    result = purge_session(tree.config().files, "s1")
    assert result.files_removed == 0
    assert result.skipped["mount_point"] == 1
    assert target.read_bytes() == b"keep me"


def test_mountinfo_lists_the_mount_points_under_the_roots(tree: Tree, bind: Mount) -> None:
    odd = tree.uploads / "with space\tand tab"
    odd.mkdir()
    bind(tree.root / "var", odd)
    assert mount_points_under([tree.uploads]) == [str(odd)]
    assert mount_points_under([tree.root / "var"]) == []


class _CountingStatx:
    """Wraps the real statx of a MountPoints and counts the mount ids it is asked for."""

    def __init__(self, mounts: MountPoints) -> None:
        self.real = mounts._statx
        self.calls = 0

    def mount_id(self, dir_fd: int, name: str | bytes) -> int | None:
        self.calls += 1
        assert self.real is not None
        return self.real.mount_id(dir_fd, name)


def _counted(tree: Tree) -> tuple[MountPoints, _CountingStatx]:
    mounts = _mounts(True, tree)
    counting = _CountingStatx(mounts)
    mounts._statx = counting  # type: ignore[assignment]
    return mounts, counting


def test_with_nothing_mounted_below_the_roots_no_file_costs_a_statx(tree: Tree) -> None:
    for n in range(20):
        tree.file(f"session_{n}.json", age=9 * DAY)
    mounts, counting = _counted(tree)
    result = sweep(tree.config().files, now=NOW, mounts=mounts)
    assert result.files_removed == 20
    # One statx for the root's own mount id; none per file.
    assert counting.calls == 1


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_a_mount_made_after_the_table_was_read_is_still_not_crossed(
    tree: Tree, bind: Mount, kind: str
) -> None:
    """The table is read when the sweep starts; a mount made later (here: after ``detect``,
    before the walk) is flagged by the kernel, and from then on every entry is asked."""
    mounts, counting = _counted(tree)
    mine = tree.file("session_mine.json", age=9 * DAY)
    if kind == "directory":
        elsewhere = tree.root / "elsewhere"
        behind = make_file(elsewhere / "session_behind.json", age=9 * DAY)
        target = tree.uploads / "mnt"
        target.mkdir()
        bind(elsewhere, target)
        config = tree.config(**_recursive(tree))
        kept = target / "session_behind.json"
    else:
        behind = make_file(tree.root / "keep.json", age=9 * DAY, data=b"keep me")
        kept = tree.file("session_mounted.json", age=9 * DAY)
        bind(behind, kept)
        config = tree.config()
    result = sweep(config.files, now=NOW, mounts=mounts)
    assert behind.exists() and kept.exists()
    assert not mine.exists()
    assert result.skipped["mount_point"] == 1
    assert result.errors == 0
    assert counting.calls > 1


def test_a_mount_that_came_and_went_during_the_sweep_keeps_every_entry_asked(
    tree: Tree,
) -> None:
    """Once something was mounted below a root, the sweep asks every entry to its end."""
    mounts, counting = _counted(tree)
    target = tree.uploads / "mnt"
    target.mkdir()
    subprocess.run(["mount", "--bind", str(tree.root / "var"), str(target)], check=True)
    try:
        root_fd = os.open(tree.uploads, os.O_RDONLY | os.O_DIRECTORY)
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert mounts.crosses_fd(mounts.of(root_fd), fd, os.fstat(fd))
        finally:
            os.close(fd)
            os.close(root_fd)
    finally:
        subprocess.run(["umount", str(target)], check=True)
    tree.file("session_a.json", age=9 * DAY)
    before = counting.calls
    sweep(tree.config().files, now=NOW, mounts=mounts)
    assert counting.calls > before + 1


def test_status_does_not_count_a_file_that_is_a_mount_point(tree: Tree, bind: Mount) -> None:
    from cleaner.survey import survey

    source = make_file(tree.root / "keep.json", age=9 * DAY, data=b"keep me")
    target = tree.file("session_mounted.json", age=9 * DAY)
    bind(source, target)
    tree.file("session_mine.json", age=9 * DAY, data=b"mine")
    config = tree.config()
    counted = survey(config.files, now=NOW)[str(tree.uploads)]["sessions"]
    assert (counted.files, counted.bytes, counted.expired) == (1, 4, 1)
