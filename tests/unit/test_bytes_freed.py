"""Bytes freed are what the filesystem got back: allocated blocks, and only when the last
link goes. A removed 1 TB sparse file and a hard link to a 10 MB file reported "1.1 TB
freed" while nothing came back."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cleaner.audit import AuditLog
from cleaner.files import sweep
from tests.fixtures.trees import DAY, NOW, Tree

MB = 1_000_000
TB = 1_000_000_000_000


def _age(path: Path) -> Path:
    os.utime(path, (NOW - 9 * DAY, NOW - 9 * DAY))
    return path


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_a_sparse_file_frees_its_blocks_and_a_hard_link_nothing(tree: Tree) -> None:
    sparse = tree.uploads / "final_sparse.mp4"
    with open(sparse, "wb") as handle:
        handle.write(b"x" * 8192)
        handle.truncate(TB)  # a hole: no blocks behind it
    _age(sparse)
    linked = _age(tree.file("temp_audio_linked.wav", age=9 * DAY, data=b"y" * (10 * MB)))
    keep = tree.root / "kept_link.wav"
    os.link(linked, keep)  # another link outside the root: the data stays
    sparse_blocks = _allocated(sparse)
    assert 8192 <= sparse_blocks < MB

    with AuditLog(tree.var / "audit.jsonl", lambda: NOW) as log:
        result = sweep(tree.config().files, now=NOW, on_remove=log.write)

    assert not sparse.exists() and not linked.exists() and keep.exists()
    assert result.removed["final_videos"].bytes == sparse_blocks
    assert result.removed["temp_audio"].bytes == 0
    assert result.bytes_removed == sparse_blocks
    assert result.apparent_bytes_removed == TB + 10 * MB
    assert result.summary().endswith(" kB freed")
    audit = {
        Path(r["path"]).name: r
        for r in map(json.loads, (tree.var / "audit.jsonl").read_text().splitlines())
    }
    assert (audit["final_sparse.mp4"]["size"], audit["final_sparse.mp4"]["freed"]) == (
        TB,
        sparse_blocks,
    )
    assert (audit["temp_audio_linked.wav"]["size"], audit["temp_audio_linked.wav"]["freed"]) == (
        10 * MB,
        0,
    )


def test_two_links_both_removed_free_the_file_once(tree: Tree) -> None:
    first = _age(tree.file("session_a.json", age=9 * DAY, data=b"z" * MB))
    second = tree.uploads / "session_b.json"
    os.link(first, second)
    blocks = _allocated(first)
    result = sweep(tree.config().files, now=NOW)
    assert tree.names() == set()
    assert result.removed["sessions"].files == 2
    assert result.removed["sessions"].bytes == blocks  # the last link freed it, once
    assert result.removed["sessions"].apparent == 2 * MB


def test_a_dry_run_says_what_would_be_freed(tree: Tree) -> None:
    path = _age(tree.file("session_a.json", age=9 * DAY, data=b"z" * 5000))
    blocks = _allocated(path)
    result = sweep(tree.config().files, now=NOW, dry_run=True)
    assert path.exists()
    assert result.to_dict()["rules"]["sessions"] == {  # type: ignore[index]
        "files": 1,
        "bytes": blocks,
        "apparent_bytes": 5000,
    }
