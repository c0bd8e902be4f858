"""Section 8, the quarantine: a quarantine sweep against the unlinking sweep, and expiry.

Each case gets a flat directory of N expired ``session_*.json`` files, made afresh for
every contender and repeat: files of one byte, written back to disk before the sweep (an
expired file is a day old: its block is long allocated, and unlinking it frees that
block), and, at the smaller sizes, empty files (no block: the least an unlink can cost).
``limpeza-cleaner once`` sweeps it with the rule unlinking, then with the rule
quarantining (``quarantine: {directory, retention, max_bytes}`` on the same filesystem): a
rename into the quarantine and one manifest line per file instead of an unlink. Then
``limpeza-cleaner quarantine purge --yes`` empties the quarantine: per entry the unlink and
the ``expire`` line the daemon's expiry makes (plus the audit of each), and the manifest
compacted after, the cost of expiring it. Every run is a child process timed by
``bench.measure``; the files left are checked after each. Manifest lines are fsynced as a
sweep does it (group commit: at most a second apart, and at the end, the quarantine's lock
held in between), not one fsync per file. What an unlink costs depends on the filesystem
and its mount options (online ``discard`` sends the freed blocks to the device): the
section names the ones it ran on.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import Run, Summary, ratio, run_child, show_mib, show_seconds, table

DAY = 86400.0


#: The contents of the files of a case: one byte, or none.
CONTENTS = {"data": b"x", "empty": b""}
LABELS = {"data": "1 byte, on disk", "empty": "empty"}


@dataclass
class Outcome:
    files: int
    contents: str = "data"
    filesystem: str = ""
    runs: dict[str, list[Run]] = field(default_factory=dict)


def _expired_files(directory: Path, count: int, contents: bytes) -> None:
    directory.mkdir(parents=True)
    old = time.time() - 2 * DAY
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(count):
            name = f"session_{i:07d}.json"
            file_fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            try:
                if contents:
                    os.write(file_fd, contents)
            finally:
                os.close(file_fd)
            os.utime(name, (old, old), dir_fd=fd)
    finally:
        os.close(fd)
    os.sync()  # written back, as a day-old file is: not part of what is measured


def filesystem(path: Path) -> str:
    """The filesystem type and mount options of the mount holding ``path``
    (/proc/self/mountinfo: the longest mount point above it)."""
    target = os.path.realpath(path)
    best, found = "", "unknown filesystem"
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            mine, _, theirs = line.partition(" - ")
            fields, rest = mine.split(), theirs.split()
            if len(fields) < 6 or len(rest) < 3:
                continue
            point = fields[4].encode().decode("unicode_escape")
            inside = point == "/" or target == point or target.startswith(point + "/")
            if inside and len(point) >= len(best):
                best = point
                options = dict.fromkeys(f"{fields[5]},{rest[2]}".split(","))
                found = f"{rest[0]}, mounted {','.join(options)}"
    return found


def _config(workdir: Path, uploads: Path, quarantine: bool) -> Path:
    held = (
        f", quarantine: {{directory: '{workdir / 'quarantine'}', retention: 7d, max_bytes: 0}}"
        if quarantine
        else ""
    )
    path = workdir / "limpeza.yml"
    path.write_text(
        f"state_file: {workdir / 'state.json'}\n"
        f"audit_log: {workdir / 'audit.jsonl'}\n"
        "log_level: warning\n"
        "files:\n"
        f"  directories: ['{uploads}']\n"
        "  rules:\n"
        f"    - {{name: sessions, pattern: 'session_*.json', max_age: 24h{held}}}\n",
        encoding="utf-8",
    )
    return path


def _cleaner(config: Path, *args: str) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMPEZA_")}
    return run_child([sys.executable, "-m", "cleaner", "--config", str(config), *args], env=env)


def run_section(
    sizes: tuple[int, ...],
    repeats: int,
    scratch: Path,
    log: Callable[[str], None],
    partial: Callable[[list[Outcome]], None] | None = None,
) -> list[Outcome]:
    """Every size; ``partial`` gets what is measured so far after each one."""
    outcomes: list[Outcome] = []
    # Empty files are the case where an unlink costs least: measured below a million.
    cases = [
        (size, kind) for size in sizes for kind in CONTENTS if kind == "data" or size < 1_000_000
    ]
    for size, kind in cases:
        outcome = Outcome(size, kind, filesystem(scratch))
        # A million files take minutes per run: measured once.
        for repeat in range(repeats if size < 1_000_000 else 1):
            for name in ("unlink", "quarantine"):
                workdir = scratch / f"quarantine-{size}-{kind}-{name}-{repeat}"
                uploads = workdir / "uploads"
                _expired_files(uploads, size, CONTENTS[kind])
                config = _config(workdir, uploads, name == "quarantine")
                log(f"quarantine: {size} {kind} files, {name} sweep, repeat {repeat + 1}")
                outcome.runs.setdefault(name, []).append(_cleaner(config, "once", "--json"))
                assert not any(os.scandir(uploads)), f"{name} left files"
                if name == "quarantine":
                    kept = len(os.listdir(workdir / "quarantine" / "files"))
                    assert kept == size, f"{kept} of {size} quarantined"
                    log(f"quarantine: {size} {kind} files, expiring them, repeat {repeat + 1}")
                    purge = _cleaner(config, "quarantine", "purge", "--yes")
                    outcome.runs.setdefault("expire", []).append(purge)
                    assert os.listdir(workdir / "quarantine" / "files") == []
                shutil.rmtree(workdir)
        outcomes.append(outcome)
        if partial is not None:
            partial(outcomes)
    return outcomes


def report(outcomes: list[Outcome]) -> str:
    rows = []
    for outcome in outcomes:
        unlink = outcome.runs["unlink"]
        unlink_wall = Summary.of([r.wall for r in unlink]).median
        unlink_cpu = Summary.of([r.cpu for r in unlink]).median
        for name, label in (
            ("unlink", "sweep, unlinking"),
            ("quarantine", "sweep, quarantining"),
            ("expire", "expiring the quarantine"),
        ):
            runs = outcome.runs[name]
            wall = Summary.of([r.wall for r in runs])
            cpu = Summary.of([r.cpu for r in runs])
            rows.append(
                [
                    f"{outcome.files:,}",
                    LABELS[outcome.contents],
                    label,
                    show_seconds(wall),
                    show_seconds(cpu),
                    show_mib(Summary.of([r.rss_kib / 1024 for r in runs])),
                    f"{outcome.files / wall.median:,.0f}",
                    ratio(wall.median, unlink_wall),
                    ratio(cpu.median, unlink_cpu),
                ]
            )
    header = [
        "files",
        "each",
        "run",
        "wall",
        "CPU",
        "peak RSS",
        "files/s",
        "wall vs unlinking",
        "CPU vs unlinking",
    ]
    places = sorted({o.filesystem for o in outcomes})
    return (
        "`limpeza-cleaner once` over a flat directory of expired files, the rule unlinking "
        "them, then the same rule with a quarantine on the same filesystem (a rename and "
        "one manifest line per file, fsynced at most a second apart and at the end), then "
        "`limpeza-cleaner quarantine purge --yes` emptying that quarantine (per entry the "
        "unlink and the `expire` line the daemon's expiry makes, and its audit line; the "
        "manifest streamed, then compacted). The audit log is on in all three. Files of one "
        "byte written back to disk before the sweep (as a day-old file is: an unlink frees "
        "its block), and empty files (nothing to free: the least an unlink costs). A fresh "
        "directory per run; medians of the repeats (one run at 1,000,000). The files were on "
        + "; ".join(f"`{p}`" for p in places)
        + ".\n\n"
        + table(header, rows)
    )
