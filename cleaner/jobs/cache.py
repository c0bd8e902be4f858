"""The API's JSON job cache: read it under a lock, count it, rewrite it without a ghost.

The cache is one JSON object of job id -> record that the API writes too, so it is
rewritten under an exclusive ``flock``, atomically (temporary file, fsync, ``os.replace``,
same mode and owner), and the whole read-modify-write starts over when the file changed
underneath. A cache that does not parse is never written; a missing one is empty.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from cleaner.jobs.staleness import JobCounts, is_stale, record_timestamp
from cleaner.state import write_json_atomic

#: How long a cache rewrite waits for the API to release the file.
CACHE_LOCK_WAIT = 5.0
#: How many times a cache rewrite starts over when the file keeps changing underneath.
CACHE_ATTEMPTS = 10


class CacheError(Exception):
    """The job cache could not be read or rewritten; the file was left as it was."""


def _parse_cache(data: bytes, path: Path) -> dict[str, dict[str, object]]:
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
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
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


def _open_cache(path: Path) -> int | None:
    """The cache opened for reading (never through a symlink); None when there is none."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheError(f"{path}: cannot open: {exc.strerror}") from None


def read_cache(path: Path, *, lock_wait: float = CACHE_LOCK_WAIT) -> dict[str, dict[str, object]]:
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
    records: Mapping[str, Mapping[str, object]], stale_after: Mapping[str, float], now: float
) -> JobCounts:
    """Jobs per status (every status seen, active ones always) and stale ones per status."""
    by_status = dict.fromkeys(stale_after, 0)
    stale = dict.fromkeys(stale_after, 0)
    for record in records.values():
        status = str(record.get("status"))
        by_status[status] = by_status.get(status, 0) + 1
        if is_stale(status, record_timestamp(record), stale_after, now):
            stale[status] += 1
    return JobCounts(by_status, stale)


Selector = Callable[[Mapping[str, object]], bool]


def rewrite_cache(
    path: Path,
    select: Selector,
    *,
    dry_run: bool = False,
    lock_wait: float = CACHE_LOCK_WAIT,
    attempts: int = CACHE_ATTEMPTS,
) -> dict[str, int]:
    """Removes the records ``select`` picks; returns how many per status.

    Holds an exclusive flock on the file from reading to replacing it; starts over when
    the path no longer names the file it locked or the file changed while it worked.
    A missing file is nothing to do; a corrupt one raises CacheError and is not touched.
    """
    for _ in range(attempts):
        fd = _open_cache(path)
        if fd is None:
            return {}
        try:
            _lock(fd, fcntl.LOCK_EX, path, lock_wait)
            before = os.fstat(fd)
            if not _same_file(path, before):
                continue  # replaced while we waited for the lock
            records = _parse_cache(_read_all(fd), path)
            removed: dict[str, int] = {}
            kept: dict[str, dict[str, object]] = {}
            for job_id, record in records.items():
                if select(record):
                    status = str(record.get("status"))
                    removed[status] = removed.get(status, 0) + 1
                else:
                    kept[job_id] = record
            if not removed or dry_run:
                return removed
            if not _same_file(path, before) or not _unchanged(fd, before):
                continue
            _replace_keeping_owner(path, kept, before)
            return removed
        finally:
            os.close(fd)
    raise CacheError(f"{path}: kept changing underneath; gave up after {attempts} attempts")


def _same_file(path: Path, opened: os.stat_result) -> bool:
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)


def _unchanged(fd: int, before: os.stat_result) -> bool:
    after = os.fstat(fd)
    return (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def _replace_keeping_owner(
    path: Path, records: Mapping[str, object], original: os.stat_result
) -> None:
    try:
        write_json_atomic(
            path,
            records,
            mode=original.st_mode & 0o7777,
            owner=(original.st_uid, original.st_gid),
            indent=2,
            sort_keys=False,
            ensure_ascii=False,
        )
    except PermissionError as exc:
        raise CacheError(
            f"{path}: cannot rewrite it with its owner {original.st_uid}:{original.st_gid} "
            f"and mode ({exc.strerror}); not rewritten"
        ) from None


def reap_cache(
    path: Path, stale_after: Mapping[str, float], now: float, *, dry_run: bool = False
) -> dict[str, int]:
    """Removes the stale active records from the cache; returns how many per status."""

    def stale(record: Mapping[str, object]) -> bool:
        return is_stale(str(record.get("status")), record_timestamp(record), stale_after, now)

    return rewrite_cache(path, stale, dry_run=dry_run)


def count_recent(records: Mapping[str, Mapping[str, object]], since: float) -> dict[str, int]:
    """Records per status whose timestamp is at or after ``since`` (epoch seconds)."""
    counts: dict[str, int] = {}
    for record in records.values():
        moment = record_timestamp(record)
        if moment is not None and moment >= since:
            status = str(record.get("status"))
            counts[status] = counts.get(status, 0) + 1
    return counts
