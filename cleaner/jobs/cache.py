"""The API's JSON job cache: read it under a lock, count it, rewrite it without losing a write.

The cache is one JSON object of job id -> record that the API writes too, each API its own
way: under the documented protocol (``flock`` the file, make sure the path still names it,
read, rewrite in place), or with no lock at all (``os.replace`` of a temporary file, a plain
``open(path, "w")``, or one handle kept open and rewritten from offset 0).

The cleaner rewrites it in place, through the same inode, under an exclusive ``flock``:
the owner, the mode and any handle the API keeps open stay valid, and a file owned by the
API's user is reaped as long as limpeza may write it (through its group). Since an API
that does not lock can write at any moment, the rewrite is a compare-and-swap: right
before writing, the path must still name the locked file and the file must still hold the
very bytes the decision was made on; right after, the file must hold what was written.
Anything else starts the read-decide-write over (a few times, then the cycle gives up with
a CacheError). What is written is the kept records padded with spaces to the old length
(JSON allows trailing white space), in one ``pwrite`` and no truncation: a reader that
does not lock never sees an empty or cut file, and a write of the API's that lands just
after the check is not cut short. A cache that does not parse is never written; a missing
one is empty; a symlink, FIFO or anything but a regular file is refused without blocking.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from collections.abc import Callable, Mapping
from datetime import tzinfo
from pathlib import Path

from cleaner.jobs.staleness import JobCounts, is_stale, record_timestamp

#: How long a cache rewrite waits for the API to release the file.
CACHE_LOCK_WAIT = 5.0
#: How many times a cache rewrite starts over when the file keeps changing underneath.
CACHE_ATTEMPTS = 10
#: How long a rewrite lets a writer that does not lock finish before it reads again.
SETTLE = 0.02

Records = dict[str, dict[str, object]]


class CacheError(Exception):
    """The job cache could not be read or rewritten; the file was left as it was."""


def _parse_cache(data: bytes, path: Path) -> Records:
    if not data.strip():
        return {}
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CacheError(f"{path}: expected a JSON object of job id -> record")
    for job_id, record in raw.items():
        if not isinstance(record, dict):
            raise CacheError(f"{path}: job {job_id!r} is not a JSON object")
    return raw


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _lock(fd: int, kind: int, path: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise CacheError(
                    f"{path}: still locked by another process after {wait:g}s"
                ) from None
            time.sleep(0.005)


def _open_cache(path: Path, flags: int = os.O_RDONLY) -> int | None:
    """The cache opened (never through a symlink, never blocking on a FIFO); None if absent."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        what = "a symlink" if exc.errno == 40 else exc.strerror  # ELOOP under O_NOFOLLOW
        raise CacheError(f"{path}: cannot open: {what}; not touched") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CacheError(f"{path}: not a regular file; not touched")
    return fd


def read_cache(path: Path, *, lock_wait: float = CACHE_LOCK_WAIT) -> Records:
    """The cache's records under a shared flock; {} when missing, CacheError when corrupt."""
    fd = _open_cache(path)
    if fd is None:
        return {}
    try:
        _lock(fd, fcntl.LOCK_SH, path, lock_wait)
        return _parse_cache(_read_all(fd), path)
    finally:
        os.close(fd)


def count_cache(
    records: Mapping[str, Mapping[str, object]],
    stale_after: Mapping[str, float],
    now: float,
    *,
    zone: tzinfo | None = None,
) -> JobCounts:
    """Jobs per status (every status seen, active ones always) and stale ones per status.

    ``zone`` reads naive ISO times (``jobs.cache_timezone``); None is the host's local time.
    """
    by_status = dict.fromkeys(stale_after, 0)
    stale = dict.fromkeys(stale_after, 0)
    for record in records.values():
        status = str(record.get("status"))
        by_status[status] = by_status.get(status, 0) + 1
        if is_stale(status, record_timestamp(record, zone), stale_after, now):
            stale[status] += 1
    return JobCounts(by_status, stale)


Selector = Callable[[Mapping[str, object]], bool]


class _ChangedError(Exception):
    """The file changed underneath this attempt: start over.

    ``removed`` are the jobs a write of this attempt did remove before the change showed.
    """

    def __init__(self, removed: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.removed = dict(removed or {})


def rewrite_cache(
    path: Path,
    select: Selector,
    *,
    dry_run: bool = False,
    lock_wait: float = CACHE_LOCK_WAIT,
    attempts: int = CACHE_ATTEMPTS,
) -> dict[str, int]:
    """Removes the records ``select`` picks, in place; returns how many per status.

    Holds an exclusive flock on the file from reading to writing it; starts over when the
    path no longer names the file it locked or the file's bytes changed (see the module
    docstring), and gives up with a CacheError after ``attempts``. A missing file is
    nothing to do; a corrupt one raises CacheError and is not touched.
    """
    removed_ids: dict[str, str] = {}  # every job removed by a write of this call
    for attempt in range(attempts):
        if attempt:
            time.sleep(0.001 * attempt)  # let a writer that does not lock finish
        fd = _open_cache(path)
        if fd is None:
            return _per_status(removed_ids)
        try:
            _lock(fd, fcntl.LOCK_EX, path, lock_wait)
            locked = os.fstat(fd)
            removed = _attempt(path, fd, locked, select, dry_run=dry_run)
        except _ChangedError as change:
            removed_ids.update(change.removed)
            continue
        finally:
            os.close(fd)
        removed_ids.update(removed)
        return _per_status(removed_ids)
    raise CacheError(
        f"{path}: kept changing underneath (an API writing it without the lock); "
        f"gave up for this cycle after {attempts} attempts"
    )


def _attempt(
    path: Path, fd: int, locked: os.stat_result, select: Selector, *, dry_run: bool
) -> dict[str, str]:
    """One read-decide-write under the lock; raises _ChangedError to start over."""
    if not _same_file(path, locked):
        raise _ChangedError  # replaced while we waited for the lock
    data = _read_all(fd)
    try:
        records = _parse_cache(data, path)
    except CacheError:
        # A writer that does not lock may be half way through; a corrupt file stays so.
        time.sleep(SETTLE)
        if not _same_file(path, locked) or _read_all(fd) != data:
            raise _ChangedError from None
        raise
    removed: dict[str, str] = {}
    kept: Records = {}
    for job_id, record in records.items():
        if select(record):
            removed[job_id] = str(record.get("status"))
        else:
            kept[job_id] = record
    if not removed or dry_run:
        return removed
    text = json.dumps(kept, ensure_ascii=False, separators=(",", ":")) + "\n"
    payload = text.encode("utf-8")
    if len(payload) < len(data):
        payload = payload[:-1] + b" " * (len(data) - len(payload)) + b"\n"
    wfd = _open_for_writing(path, locked)
    try:
        # Compare, then swap: nothing may have changed since the decision.
        if not _same_file(path, locked) or _read_all(fd) != data:
            raise _ChangedError
        _write_at_zero(wfd, payload)
        os.fsync(wfd)
        # Verify: an API's write that landed after ours is kept, and this pass retried.
        after = _read_all(fd)
        if after != payload or not _same_file(path, locked):
            if len(after) > len(payload) and after.startswith(payload):
                _overwritten(path, fd, wfd, after, len(payload))
            raise _ChangedError(removed)
    finally:
        os.close(wfd)
    return removed


def _overwritten(path: Path, fd: int, wfd: int, seen: bytes, size: int) -> None:
    """An API's longer write landed between the check and the write; its head is lost.

    What is left is this rewrite followed by the tail of the API's write: not JSON. It is
    cut back to this rewrite (when nothing changed again) so the cache stays readable, and
    the cycle reports it: the one write that can be lost, in a window of microseconds.
    """
    if _read_all(fd) == seen:
        os.ftruncate(wfd, size)
        os.fsync(wfd)
    raise CacheError(
        f"{path}: a write of the API's (without the lock) landed during the rewrite and "
        "was overwritten; the cache was kept readable"
    )


def _open_for_writing(path: Path, locked: os.stat_result) -> int:
    try:
        wfd = _open_cache(path, os.O_WRONLY)
    except CacheError:
        raise CacheError(
            f"{path}: cannot write it (owner {locked.st_uid}:{locked.st_gid}, mode "
            f"{stat.S_IMODE(locked.st_mode):04o}; limpeza needs write access, e.g. through "
            "the API's group); not rewritten"
        ) from None
    if wfd is None:
        raise _ChangedError
    if not _same_inode(os.fstat(wfd), locked):
        os.close(wfd)
        raise _ChangedError
    return wfd


def _write_at_zero(fd: int, payload: bytes) -> None:
    written = 0
    while written < len(payload):
        written += os.pwrite(fd, payload[written:], written)


def _same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _same_file(path: Path, opened: os.stat_result) -> bool:
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return _same_inode(now, opened)


def _per_status(removed_ids: Mapping[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in removed_ids.values():
        counts[status] = counts.get(status, 0) + 1
    return counts


def reap_cache(
    path: Path,
    stale_after: Mapping[str, float],
    now: float,
    *,
    dry_run: bool = False,
    zone: tzinfo | None = None,
) -> dict[str, int]:
    """Removes the stale active records from the cache; returns how many per status.

    ``zone`` reads naive ISO times (``jobs.cache_timezone``); None is the host's local time.
    """

    def stale(record: Mapping[str, object]) -> bool:
        return is_stale(str(record.get("status")), record_timestamp(record, zone), stale_after, now)

    return rewrite_cache(path, stale, dry_run=dry_run)


def count_recent(
    records: Mapping[str, Mapping[str, object]], since: float, *, zone: tzinfo | None = None
) -> dict[str, int]:
    """Records per status whose timestamp is at or after ``since`` (epoch seconds)."""
    counts: dict[str, int] = {}
    for record in records.values():
        moment = record_timestamp(record, zone)
        if moment is not None and moment >= since:
            status = str(record.get("status"))
            counts[status] = counts.get(status, 0) + 1
    return counts
