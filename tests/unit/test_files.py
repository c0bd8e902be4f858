"""The file sweep: what it removes, what it never touches, and the classic attacks."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleaner.audit import AuditLog
from cleaner.files import SweepHooks, sweep
from cleaner.report import format_bytes
from cleaner.sessions import purge_session, validate_session_id
from cleaner.sweep_result import Removal, SweepResult
from tests.fixtures.trees import DAY, NOW, Tree


def _sweep(tree: Tree, **kwargs: object) -> SweepResult:
    config = tree.config(**kwargs.pop("config", {}))  # type: ignore[arg-type]
    return sweep(config.files, now=NOW, **kwargs)  # type: ignore[arg-type]


def test_removes_only_expired_matching_files(tree: Tree) -> None:
    tree.file("session_old.json", age=2 * DAY, data=b"12345")
    tree.file("session_new.json", age=3600)
    tree.file("temp_audio_old.wav", age=25 * 3600, data=b"1234567")
    tree.file("final_old.mp4", age=30 * DAY)
    tree.file("final_new.mp4", age=60)
    tree.file("original_video.mp4", age=365 * DAY)
    tree.file("upload_user.mp4", age=365 * DAY)
    tree.file("session_old.json.bak", age=365 * DAY)
    block = os.stat(tree.uploads / "session_old.json").st_blocks * 512  # one block each
    result = _sweep(tree)
    assert tree.names() == {
        "session_new.json",
        "final_new.mp4",
        "original_video.mp4",
        "upload_user.mp4",
        "session_old.json.bak",
    }
    assert {k: (t.files, t.bytes, t.apparent) for k, t in result.removed.items()} == {
        "sessions": (1, block, 5),
        "temp_audio": (1, block, 7),
        "final_videos": (1, block, 1),
    }
    assert result.errors == 0
    usage = result.directories[str(tree.uploads)]
    assert (usage.files, usage.bytes) == (5, 5)  # what stays on disk


def test_summary_line_in_the_seed_spirit(tree: Tree) -> None:
    path = tree.file("session_a.json", age=2 * DAY, data=b"x" * 1500)
    freed = format_bytes(os.stat(path).st_blocks * 512)
    result = _sweep(tree)
    assert result.summary().startswith(
        "cleanup done: 1 files removed (sessions: 1, temp_audio: 0, final_videos: 0, errors: 0)"
    )
    assert result.summary().endswith(f"), {freed} freed")
    assert format_bytes(1_200_000_000) == "1.2 GB"


def test_protect_wins_over_every_rule(tree: Tree) -> None:
    tree.file("original_session_1.json", age=9 * DAY)
    tree.file("session_1.json", age=9 * DAY)
    config = {
        "files": {
            "directories": [str(tree.uploads)],
            "protect": ["original_*", "*_keep.json"],
            "rules": [{"name": "all_json", "pattern": "*.json", "max_age": 0}],
        }
    }
    tree.file("session_2_keep.json", age=9 * DAY)
    result = _sweep(tree, config=config)
    assert tree.names() == {"original_session_1.json", "session_2_keep.json"}
    assert result.skipped["protected"] == 2


def test_max_age_zero_removes_every_matching_file(tree: Tree) -> None:
    tree.file("session_now.json", age=0)
    tree.file("session_future.json", age=-3600)  # clock skew: still "every" file
    tree.file("original_x.json", age=0)
    _sweep(tree, max_age=0)
    assert tree.names() == {"original_x.json"}


def test_dry_run_changes_nothing_and_reports_sizes(tree: Tree) -> None:
    tree.file("session_a.json", age=2 * DAY, data=b"abc")
    seen: list[Removal] = []
    result = _sweep(tree, dry_run=True, on_remove=seen.append)
    assert tree.names() == {"session_a.json"}
    assert [(r.rule, r.size) for r in seen] == [("sessions", 3)]
    assert result.files_removed == 1
    assert result.summary().startswith("cleanup dry run: 1 files would be removed")


def test_recursive_rule_descends_and_plain_rule_does_not(tree: Tree) -> None:
    tree.file("a/b/session_deep.json", age=2 * DAY)
    tree.file("a/final_deep.mp4", age=2 * DAY)
    config = {
        "files": {
            "directories": [str(tree.uploads)],
            "rules": [
                {
                    "name": "sessions",
                    "pattern": "session_*.json",
                    "max_age": "1d",
                    "recursive": True,
                },
                {"name": "final_videos", "pattern": "final_*.mp4", "max_age": "1d"},
            ],
        }
    }
    _sweep(tree, config=config)
    assert tree.names() == {"a", "a/b", "a/final_deep.mp4"}


def _nested(tree: Tree, inner: str) -> dict[str, object]:
    """uploads swept recursively after 1 day; ``inner`` (inside it) by its own 30-day rule."""
    return {
        "files": {
            "directories": [str(tree.uploads)],
            "rules": [
                {"name": "short", "pattern": "*.json", "max_age": "1d", "recursive": True},
                {
                    "name": "long",
                    "pattern": "*.json",
                    "max_age": "30d",
                    "recursive": True,
                    "directories": [inner],
                },
            ],
        }
    }


def test_a_nested_root_is_swept_by_its_own_rules_only(tree: Tree) -> None:
    """The more specific directory wins, as in systemd-tmpfiles: the outer walk skips it."""
    tree.file("session_old.json", age=2 * DAY)
    tree.file("keep/session_kept.json", age=2 * DAY, data=b"12345")
    tree.file("keep/deeper/session_kept2.json", age=2 * DAY)
    tree.file("keep/session_ancient.json", age=31 * DAY)
    tree.file("other/session_old2.json", age=2 * DAY)
    result = _sweep(tree, config=_nested(tree, str(tree.uploads / "keep")))
    assert tree.names() == {
        "keep",
        "keep/session_kept.json",
        "keep/deeper",
        "keep/deeper/session_kept2.json",
        "other",
    }
    assert {k: t.files for k, t in result.removed.items()} == {"short": 2, "long": 1}
    # Each file is counted once, under the directory whose rules sweep it.
    outer = result.directories[str(tree.uploads)]
    inner = result.directories[str(tree.uploads / "keep")]
    assert (outer.files, outer.bytes) == (0, 0)
    assert (inner.files, inner.bytes) == (2, 6)


def test_status_counts_a_nested_roots_files_under_its_own_rules_only(tree: Tree) -> None:
    from cleaner.config import build
    from cleaner.survey import survey

    tree.file("keep/session_kept.json", age=2 * DAY)
    tree.file("session_old.json", age=2 * DAY)
    files = build(_nested(tree, str(tree.uploads / "keep")), env={}).files
    report = survey(files, now=NOW)
    assert (
        report[str(tree.uploads)]["short"].files,
        report[str(tree.uploads)]["short"].expired,
    ) == (1, 1)
    inner = report[str(tree.uploads / "keep")]["long"]
    assert (inner.files, inner.expired) == (1, 0)


def test_a_nested_root_named_through_a_link_is_still_the_same_root(
    tree: Tree, tmp_path: Path
) -> None:
    tree.file("keep/session_kept.json", age=2 * DAY)
    link = tmp_path / "keep-link"
    link.symlink_to(tree.uploads / "keep")
    result = _sweep(tree, config=_nested(tree, str(link)))
    assert tree.names() == {"keep", "keep/session_kept.json"}
    assert result.directories[str(tree.uploads)].files == 0
    assert result.directories[str(link)].files == 1


def test_rule_with_its_own_directories(tree: Tree, tmp_path: Path) -> None:
    renders = tmp_path / "renders"
    renders.mkdir()
    (renders / "final_1.mp4").write_bytes(b"x")
    os.utime(renders / "final_1.mp4", (NOW - 2 * DAY, NOW - 2 * DAY))
    tree.file("final_2.mp4", age=2 * DAY)
    config = {
        "files": {
            "directories": [str(tree.uploads)],
            "rules": [
                {
                    "name": "final_videos",
                    "pattern": "final_*.mp4",
                    "max_age": "1d",
                    "directories": [str(renders)],
                },
            ],
        }
    }
    _sweep(tree, config=config)
    assert not (renders / "final_1.mp4").exists()
    assert (tree.uploads / "final_2.mp4").exists()


def test_missing_directory_is_not_an_error(tree: Tree) -> None:
    config = {"files": {"directories": [str(tree.root / "nope"), str(tree.uploads)]}}
    tree.file("session_a.json", age=2 * DAY)
    result = _sweep(tree, config=config)
    assert result.errors == 0
    assert result.missing == [str(tree.root / "nope")]
    assert result.files_removed == 1


# --------------------------------------------------------------------------- attacks


def test_matching_symlink_to_outside_file_is_skipped(tree: Tree, tmp_path: Path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"keep me")
    os.utime(outside, (NOW - 9 * DAY, NOW - 9 * DAY))
    link = tree.uploads / "session_evil.json"
    link.symlink_to(outside)
    os.utime(link, (NOW - 9 * DAY, NOW - 9 * DAY), follow_symlinks=False)
    result = _sweep(tree, max_age=0)
    assert outside.read_bytes() == b"keep me"
    assert link.is_symlink()
    assert result.skipped["symlink"] == 1
    assert result.files_removed == 0


def test_symlinked_directory_inside_a_root_is_not_followed(tree: Tree, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "session_victim.json"
    victim.write_bytes(b"x")
    os.utime(victim, (NOW - 9 * DAY, NOW - 9 * DAY))
    (tree.uploads / "sub").symlink_to(elsewhere, target_is_directory=True)
    config = {
        "files": {
            "directories": [str(tree.uploads)],
            "rules": [{"name": "s", "pattern": "session_*", "max_age": 0, "recursive": True}],
        }
    }
    _sweep(tree, config=config)
    assert victim.exists()


def test_entry_swapped_for_symlink_between_scan_and_unlink(tree: Tree, tmp_path: Path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"keep me")
    target = tree.file("session_race.json", age=9 * DAY)

    def swap(path: str) -> None:  # the scan saw a regular file; now it is a link
        assert path == str(target)
        target.unlink()
        target.symlink_to(outside)

    result = _sweep(tree, hooks=SweepHooks(before_open=swap))
    assert outside.read_bytes() == b"keep me"
    assert target.is_symlink()
    assert result.skipped["changed"] == 1
    assert result.files_removed == 0


def test_entry_replaced_right_before_unlink_is_spared(tree: Tree) -> None:
    target = tree.file("session_race.json", age=9 * DAY)

    def replace(path: str) -> None:  # the old file was checked and locked; a new one lands
        replacement = target.with_name("new")
        replacement.write_bytes(b"a new upload with the same name")
        replacement.replace(target)

    result = _sweep(tree, hooks=SweepHooks(before_unlink=replace))
    assert target.read_bytes() == b"a new upload with the same name"
    assert result.skipped["changed"] == 1


def test_names_with_newlines_and_non_utf8_bytes(tree: Tree) -> None:
    odd_names = [b"session_a\nb.json", b"session_\xff\xfe.json", b"temp_audio_\n.wav"]
    for raw in odd_names:
        path = os.path.join(os.fsencode(tree.uploads), raw)
        with open(path, "wb") as handle:
            handle.write(b"x")
        os.utime(path, (NOW - 9 * DAY, NOW - 9 * DAY))
    audit_path = tree.var / "audit.jsonl"
    with AuditLog(audit_path, lambda: NOW) as audit:
        result = _sweep(tree, on_remove=audit.write)
    assert os.listdir(os.fsencode(tree.uploads)) == []
    assert result.files_removed == 3
    lines = audit_path.read_text(encoding="ascii").splitlines()
    assert len(lines) == 3
    paths = {os.fsencode(json.loads(line)["path"]) for line in lines}
    assert paths == {os.path.join(os.fsencode(tree.uploads), raw) for raw in odd_names}


def test_file_without_read_permission_is_still_expired(tree: Tree) -> None:
    target = tree.file("session_locked_down.json", age=9 * DAY)
    target.chmod(0)
    result = _sweep(tree)
    assert not target.exists()
    assert result.errors == 0


def test_files_vanishing_mid_scan_are_not_errors(tree: Tree) -> None:
    for i in range(6):
        tree.file(f"session_{i}.json", age=9 * DAY)
    opened: list[str] = []

    def delete_others(path: str) -> None:
        # The first candidate is out of the scan, which has listed the rest but not yet
        # looked at them: half of the files go now (maybe this very one).
        if not opened:
            for i in range(3):
                (tree.uploads / f"session_{i}.json").unlink(missing_ok=True)
        opened.append(path)

    result = _sweep(tree, hooks=SweepHooks(before_open=delete_others))
    assert len(opened) >= 1
    assert result.errors == 0
    assert tree.names() == set()


def test_file_vanishing_between_check_and_unlink(tree: Tree) -> None:
    target = tree.file("session_gone.json", age=9 * DAY)

    def delete(path: str) -> None:
        target.unlink()

    result = _sweep(tree, hooks=SweepHooks(before_unlink=delete))
    assert result.errors == 0
    assert result.files_removed == 0


@pytest.fixture
def flock_holder(tree: Tree) -> Iterator[Path]:
    """A file held with flock by another process (util-linux flock), released after."""
    target = tree.file("temp_audio_pinned.wav", age=9 * DAY)
    ready = tree.root / "ready"
    holder = subprocess.Popen(
        ["flock", "--shared", str(target), "sh", "-c", f"touch {ready}; sleep 60"]
    )
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        yield target
    finally:
        holder.terminate()
        holder.wait(timeout=10)


def test_file_held_by_flock_is_skipped(tree: Tree, flock_holder: Path) -> None:
    tree.file("temp_audio_free.wav", age=9 * DAY)
    result = _sweep(tree)
    assert flock_holder.exists()
    assert not (tree.uploads / "temp_audio_free.wav").exists()
    assert result.skipped["locked"] == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_never_crosses_a_mount_point(tree: Tree) -> None:
    mnt = tree.uploads / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "limpeza-test", str(mnt)], check=True)
    try:
        inner = mnt / "session_other_fs.json"
        inner.write_bytes(b"x")
        os.utime(inner, (NOW - 9 * DAY, NOW - 9 * DAY))
        config = {
            "files": {
                "directories": [str(tree.uploads)],
                "rules": [{"name": "s", "pattern": "session_*", "max_age": 0, "recursive": True}],
            }
        }
        result = _sweep(tree, config=config)
        assert inner.exists()
        assert result.skipped["mount_point"] == 1
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_stop_request_ends_the_sweep_after_the_current_file(tree: Tree) -> None:
    for i in range(5):
        tree.file(f"session_{i}.json", age=9 * DAY)
    result = _sweep(tree, should_stop=lambda: True)
    assert result.stopped
    assert result.files_removed == 1
    assert len(tree.names()) == 4


def test_directory_matching_a_pattern_is_not_removed(tree: Tree) -> None:
    (tree.uploads / "session_dir.json").mkdir()
    result = _sweep(tree, max_age=0)
    assert (tree.uploads / "session_dir.json").is_dir()
    assert result.skipped["not_regular"] == 1


def test_fifo_matching_a_pattern_is_not_opened(tree: Tree) -> None:
    os.mkfifo(tree.uploads / "session_fifo.json")
    result = _sweep(tree, max_age=0)  # would block forever if the fifo were opened
    assert (tree.uploads / "session_fifo.json").exists()
    assert result.skipped["not_regular"] == 1


# --------------------------------------------------------------------------- purge-session


def test_purge_session_removes_the_sessions_files_but_not_final(tree: Tree) -> None:
    for name in (
        "session_abc.json",
        "temp_audio_abc.wav",
        "final_abc.mp4",
        "session_abcd.json",
        "original_abc.mp4",
    ):
        tree.file(name, age=10)
    result = purge_session(tree.config().files, "abc")
    assert tree.names() == {"final_abc.mp4", "session_abcd.json", "original_abc.mp4"}
    assert result.files_removed == 2
    purge_session(tree.config().files, "abc", include_final=True)
    assert tree.names() == {"session_abcd.json", "original_abc.mp4"}


def test_purge_session_dry_run(tree: Tree) -> None:
    tree.file("session_abc.json", age=10)
    result = purge_session(tree.config().files, "abc", dry_run=True)
    assert result.files_removed == 1
    assert tree.names() == {"session_abc.json"}


def test_purge_session_skips_symlinks(tree: Tree, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.write_bytes(b"keep")
    (tree.uploads / "session_abc.json").symlink_to(outside)
    result = purge_session(tree.config().files, "abc")
    assert outside.read_bytes() == b"keep"
    assert result.skipped["symlink"] == 1


HOSTILE_IDS = [
    "../x",
    "a/b",
    "*",
    "",
    "..",
    ".",
    "x" * 129,
    "a b",
    "a\nb",
    "é",
    "a\x00b",
    "session_*",
    "{id}",
    "-" * 129,
    "abc/../../etc",
]


@pytest.mark.parametrize("session_id", HOSTILE_IDS)
def test_hostile_session_ids_refused_before_touching_the_disk(tree: Tree, session_id: str) -> None:
    tree.file("session_x.json", age=10)
    tree.file("session_.json", age=10)
    with pytest.raises(ValueError, match="invalid session id"):
        purge_session(tree.config().files, session_id)
    assert tree.names() == {"session_x.json", "session_.json"}


@pytest.mark.parametrize("session_id", ["a", "abc-DEF_123", "x" * 128, "-", "_"])
def test_good_session_ids(session_id: str) -> None:
    validate_session_id(session_id)


def test_importable_purge_session(tree: Tree) -> None:
    import cleaner

    tree.file("session_k1.json", age=10)
    path = tree.write_config()
    result = cleaner.purge_session("k1", config_file=path)
    assert result.files_removed == 1
    with pytest.raises(ValueError):
        cleaner.purge_session("../k1", config_file=path)
