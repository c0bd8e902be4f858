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
