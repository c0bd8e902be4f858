"""The sweep memory: what the daemon's sweeps remember of each directory between cycles."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from cleaner.config import FilesConfig

#: A directory modified less than this long before it was read is read again next time:
#: timestamps come from a coarse clock, so a change right after the read could leave the
#: same mtime behind.
MTIME_MARGIN_NS = 2_000_000_000
#: Static skips remembered with a directory and counted again when it is not re-read.
STATIC_SKIPS = ("protected", "symlink", "not_regular", "mount_point")


class DirectoryTally:
    """Counts of one directory while it is read."""

    __slots__ = ("bytes", "clean", "files", "next_expiry", "skips")

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0
        self.skips = [0] * len(STATIC_SKIPS)
        self.next_expiry = math.inf
        self.clean = True


@dataclass(frozen=True)
class Seen:
    """What reading one directory found, kept while its mtime proves nothing came or went."""

    dev: int
    ino: int
    mtime_ns: int
    files: int
    bytes: int
    skips: tuple[int, ...]
    #: The earliest moment a matching file here reaches its rule's age.
    next_expiry: float
    subdirs: tuple[str, ...]


class SweepMemory:
    """What the daemon's sweeps remember between cycles, so an idle sweep is cheap.

    A directory whose mtime is unchanged since it was read holds the same names, so until
    the earliest of its matching files expires there is nothing to remove in it: the sweep
    does not read it again and counts the files and bytes it found last time. Removal stays
    exact whenever a directory is read; what can lag, by at most ``files.full_read_every``
    (every directory is read again then; 5 minutes by default), is what changes without
    touching the directory's mtime: a file whose mtime is set back (it is removed late,
    never early) and a file that grows or shrinks in place (its bytes are counted late). A
    directory where anything was removed, skipped as locked or changed, or failed, is read
    again next cycle.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        #: Measures the time between full reads; never the wall clock, which can jump.
        self.clock = clock
        self.directories: dict[tuple[str, str], Seen] = {}
        self._files: FilesConfig | None = None
        self._full_read_at: float | None = None
        self.reused = 0

    def begin(self, files: FilesConfig) -> None:
        """Called at the start of each sweep: forgets everything on a full one.

        A sweep is a full read when ``files.full_read_every`` has passed since the last
        full read began (0: every sweep), or when the files configuration changed.
        """
        now = self.clock()
        if (
            files != self._files
            or self._full_read_at is None
            or now - self._full_read_at >= files.full_read_every
        ):
            self.directories.clear()
            self._full_read_at = now
        self._files = files
        self.reused = 0

    def recall(self, key: tuple[str, str], dir_fd: int, now: float) -> Seen | None:
        """What the directory held when last read, if that provably still holds at ``now``.

        ``key`` is (root, directory); ``dir_fd`` is the directory, open.
        """
        seen = self.directories.get(key)
        if seen is None:
            return None
        st = os.fstat(dir_fd)
        if (st.st_dev, st.st_ino, st.st_mtime_ns) != (seen.dev, seen.ino, seen.mtime_ns):
            return None
        if now >= seen.next_expiry:
            return None
        self.reused += 1
        return seen

    def store(
        self,
        key: tuple[str, str],
        before: os.stat_result,
        after: os.stat_result,
        read_started_ns: int,
        tally: DirectoryTally | None,
        subdirs: list[str],
    ) -> None:
        """Keeps what reading a directory found, or forgets it.

        ``before`` and ``after`` are the directory's stat around the read, which began at
        ``read_started_ns``; ``tally`` is None when something there is to be removed or
        failed. It is kept only when the directory's mtime can prove next time that
        nothing came or went: unchanged during the read, and older than the clock's margin.
        """
        if (
            tally is not None
            and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
            and before.st_mtime_ns < read_started_ns - MTIME_MARGIN_NS
        ):
            self.directories[key] = Seen(
                before.st_dev,
                before.st_ino,
                before.st_mtime_ns,
                tally.files,
                tally.bytes,
                tuple(tally.skips),
                tally.next_expiry,
                tuple(subdirs),
            )
        else:
            self.directories.pop(key, None)
