"""Generated upload trees: the three rule patterns, half expired, and originals that stay.

Every fourth file is an ``original_*`` (protected, whatever its age); the others are
``session_*.json``, ``temp_audio_*.wav`` and ``final_*.mp4``. Half of each kind is two to
three days old, the other half one to three hours old, so with a 24 h limit every
contender must remove exactly the old files of the three patterns (3/8 of the tree) and
boundary rounding (find's whole minutes, tmpfiles' age rules) cannot change the set.
Files are sparse: they have a size but no data blocks.

A *flat* tree has every file in its root; a *nested* one spreads them over two levels of
directories, 100 files per leaf directory.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KINDS = (
    ("session_{:07d}.json", 700),
    ("temp_audio_{:07d}.wav", 48_000),
    ("final_{:07d}.mp4", 2_000_000),
    ("original_{:07d}.mp4", 3_000_000),
)
PATTERNS = ("session_*.json", "temp_audio_*.wav", "final_*.mp4")
PROTECT = "original_*"
MAX_AGE_HOURS = 24
FILES_PER_LEAF = 100
DAY = 86_400


@dataclass(frozen=True)
class Tree:
    root: Path
    files: int
    nested: bool
    depth: int  # directory levels below the root holding files (0 for flat)
    survivors: str  # digest of the relative paths that must remain
    survivor_count: int

    @property
    def shape(self) -> str:
        return "nested" if self.nested else "flat"


def _layout(files: int, nested: bool) -> Iterator[tuple[str, int]]:
    """(relative directory, file index) for every file, directories in creation order."""
    if not nested:
        for i in range(files):
            yield "", i
        return
    leaves = math.ceil(files / FILES_PER_LEAF)
    top = math.ceil(math.sqrt(leaves))
    i = 0
    for leaf in range(leaves):
        rel = f"a{leaf // top:03d}/b{leaf % top:03d}"
        for _ in range(min(FILES_PER_LEAF, files - i)):
            yield rel, i
            i += 1


def _is_expired(i: int) -> bool:
    return (i // len(KINDS)) % 2 == 0


def generate(root: Path, files: int, *, nested: bool, now: float, idle: bool = False) -> Tree:
    """Creates the tree under ``root`` (which must not exist) and returns its description.

    ``idle``: nothing is expired (every file one to three hours old).
    """
    root.mkdir(parents=True)
    survivors: list[str] = []
    made: set[str] = set()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for rel, i in _layout(files, nested):
        directory = root / rel if rel else root
        if rel not in made:
            directory.mkdir(parents=True, exist_ok=True)
            made.add(rel)
        kind = i % len(KINDS)
        template, size = KINDS[kind]
        name = template.format(i)
        expired = not idle and _is_expired(i)
        # Spread the ages so no two files share an mtime and nothing sits near 24 h.
        age = 2 * DAY + (i * 7919) % DAY if expired else 3600 + (i * 7919) % 7200
        mtime_ns = int((now - age) * 1e9)
        path = os.path.join(directory, name)
        fd = os.open(path, flags, 0o644)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        os.utime(path, ns=(mtime_ns, mtime_ns))
        if kind == len(KINDS) - 1 or not expired:
            survivors.append(os.path.join(rel, name) if rel else name)
    # Directories last, so creating files does not leave them looking new.
    old_ns = int((now - 4 * DAY) * 1e9)
    parents = {rel.split("/")[0] for rel in made if "/" in rel}
    for rel in sorted(made | parents, key=len, reverse=True):
        os.utime(root / rel if rel else root, ns=(old_ns, old_ns))
    return Tree(
        root,
        files,
        nested,
        2 if nested else 0,
        digest(survivors),
        len(survivors),
    )


def digest(relative_paths: list[str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(relative_paths):
        h.update(rel.encode())
        h.update(b"\0")
    return h.hexdigest()


def surviving(root: Path) -> tuple[str, int]:
    """Digest and count of the regular files left under ``root``."""
    found: list[str] = []
    for dirpath, _dirs, names in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        found.extend(n if rel == "." else os.path.join(rel, n) for n in names)
    return digest(found), len(found)


def copy(tree: Tree, dest: Path) -> Path:
    """An independent copy (no hard links) with every mtime preserved."""
    subprocess.run(["cp", "-a", str(tree.root), str(dest)], check=True)
    return dest


def remove(path: Path) -> None:
    # rm is several times faster than shutil.rmtree on a million files.
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free
