"""Where limpeza's CPU goes in one sweep: cProfile of ``limpeza-cleaner once``, grouped.

Section 1 compares limpeza with the contract-limit program (the same system calls, in C);
this says what the rest is. The profile is of one run on a ``cp -a`` copy of a generated
tree; cProfile slows Python code more than system calls, so the Python shares are upper
bounds. Groups, by where a function is defined:

* system calls: the ``posix`` and ``fcntl`` built-ins (stat, open, unlink, close, flock);
  the ``statx`` of the mount check goes through ctypes and counts in ``mounts.mount_id``,
* matching: ``cleaner.patterns`` (which rule a name falls under, protect globs),
* walk and removal: ``cleaner.files``, ``cleaner.mounts``, ``cleaner.sweep_result``,
* output: what ``once`` prints and records (``cleaner.cli``, ``cleaner.report``,
  ``cleaner.audit``, ``json``),
* start-up and the rest: imports, configuration, everything else.
"""

from __future__ import annotations

import pstats
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench import expiry, trees
from bench.measure import table

GROUPS = (
    ("system calls", ("<built-in method posix.", "<built-in method fcntl.")),
    ("matching", ("cleaner/patterns.py",)),
    (
        "walk and removal",
        ("cleaner/files.py", "cleaner/mounts.py", "cleaner/sweep_result.py", "cleaner/memory.py"),
    ),
    ("output", ("cleaner/cli.py", "cleaner/report.py", "cleaner/audit.py", "/json/")),
)
TOP = 10


def _group(key: tuple[str, int, str]) -> str:
    where = f"{key[0]}:{key[2]}"
    for name, markers in GROUPS:
        if any(marker in where for marker in markers):
            return name
    return "start-up and the rest"


def _label(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    if filename == "~":
        return function
    parts = Path(filename).parts
    short = "/".join(parts[-2:]) if "cleaner" in parts else parts[-1]
    return f"{short}:{line}({function})"


def profile(tree: trees.Tree, scratch: Path, log: Callable[[str], None]) -> str:
    """Runs limpeza once under cProfile on a copy of ``tree``; a Markdown report."""
    copy_root = scratch / "copy-profile"
    trees.copy(tree, copy_root)
    try:
        with tempfile.TemporaryDirectory(dir=scratch) as work:
            argv = expiry.contender_argv("limpeza", copy_root, tree, Path(work))
            out = Path(work) / "profile.out"
            subprocess.run(
                [sys.executable, "-m", "cProfile", "-o", str(out), *argv],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            stats = pstats.Stats(str(out))
    finally:
        trees.remove(copy_root)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(value[2] for value in entries.values()) or 1.0
    groups: dict[str, float] = {}
    for key, value in entries.items():
        groups[_group(key)] = groups.get(_group(key), 0.0) + value[2]
    log(f"  profile {tree.files} {tree.shape}: {total:.2f}s under cProfile")
    group_rows = [
        [name, f"{seconds:.2f} s", f"{100 * seconds / total:.0f}%"]
        for name, seconds in sorted(groups.items(), key=lambda item: -item[1])
    ]
    top = sorted(entries.items(), key=lambda item: -item[1][2])[:TOP]
    top_rows = [
        [_label(key), f"{value[1]:,}", f"{value[2]:.2f} s", f"{100 * value[2] / total:.0f}%"]
        for key, value in top
    ]
    return (
        f"Where limpeza's CPU goes at {tree.files:,} files, {tree.shape} (cProfile of one "
        f"`once`, {total:.2f} s of own time in all; cProfile inflates Python code more than "
        "system calls):\n\n"
        + table(["group", "own time", "share"], group_rows)
        + "\n\nThe ten functions with the most own time:\n\n"
        + table(["function", "calls", "own time", "share"], top_rows)
    )
