"""The JSON job cache: stale entries go, the API's writes are never lost, corrupt is left alone."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cleaner.config import build
from cleaner.jobs.cache import CacheError, read_cache, reap_cache, rewrite_cache
from cleaner.state import State
from tests.integration.recording import RecordingReaper

pytestmark = pytest.mark.integration

STALE_AFTER = {"running": 180.0, "queued": 120.0}


def iso(seconds_ago: float, *, z: bool = False, naive: bool = False) -> str:
    if naive:  # as datetime.now().isoformat() writes it: the host's local time
        return (datetime.now() - timedelta(seconds=seconds_ago)).isoformat()
    moment = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    text = moment.isoformat()
    return text.replace("+00:00", "Z") if z else text


def reaper_for(cache: Path, **jobs: object) -> tuple[RecordingReaper, State]:
    config = build({"jobs": {"cache_file": str(cache), **jobs}}, env={})
    state = State()
    return RecordingReaper(config.jobs, state), state


def test_iso_and_epoch_timestamps_stale_active_entries_go(tmp_path: Path) -> None:
    now = time.time()
    records = {
        "iso-stale": {"status": "running", "updated_at": iso(600)},
        "iso-z-stale": {"status": "queued", "started_at": iso(300, z=True)},
        "naive-stale": {"status": "running", "created_at": iso(600, naive=True)},
        "epoch-stale": {"status": "running", "updated_at": now - 600},
        "epoch-ms-stale": {"status": "queued", "updated_at": int((now - 600) * 1000)},
        "epoch-str-stale": {"status": "running", "updated_at": str(now - 600)},
        "iso-fresh": {"status": "running", "updated_at": iso(10)},
        "epoch-fresh": {"status": "queued", "updated_at": now - 10},
        "heartbeat": {"status": "running", "started_at": now - 7200, "updated_at": now - 5},
        "done-old": {"status": "done", "updated_at": now - 10**6},
        "no-time": {"status": "running"},
        "extra-fields": {"status": "running", "updated_at": now - 1, "user": "ü", "n": [1, 2]},
    }
    cache = tmp_path / "jobs.json"
    cache.write_text(json.dumps(records))
    reaper, state = reaper_for(cache)
    try:
        report = reaper.cycle()
    finally:
        reaper.close()
    kept = json.loads(cache.read_text(encoding="utf-8"))
    assert set(kept) == {
        "iso-fresh",
        "epoch-fresh",
        "heartbeat",
        "done-old",
        "no-time",
        "extra-fields",
    }
    assert kept["extra-fields"] == records["extra-fields"]  # records kept as they were
    assert report.cache_reaped == {"running": 4, "queued": 2}
    assert state.jobs_reaped == {"cache": {"running": 4, "queued": 2}}
    assert state.jobs_active == 5  # iso-fresh, epoch-fresh, heartbeat, no-time, extra-fields


def test_rewrite_in_place_keeps_mode_and_owner(tmp_path: Path) -> None:
    cache = tmp_path / "jobs.json"
    cache.write_text(json.dumps({"a": {"status": "running", "updated_at": time.time() - 999}}))
    os.chmod(cache, 0o640)
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        owner = (nobody.pw_uid, nobody.pw_gid)
        os.chown(cache, *owner)
    inode = cache.stat().st_ino
    removed = reap_cache(cache, STALE_AFTER, time.time())
    assert removed == {"running": 1}
    after = cache.stat()
    assert after.st_ino == inode  # rewritten in place: an API's open handle stays valid
    assert after.st_mode & 0o7777 == 0o640
    assert (after.st_uid, after.st_gid) == owner
    assert json.loads(cache.read_text()) == {}
    assert [p.name for p in tmp_path.iterdir()] == ["jobs.json"]  # no temporary left


def test_nothing_stale_leaves_the_file_untouched(tmp_path: Path) -> None:
    cache = tmp_path / "jobs.json"
    cache.write_text(json.dumps({"a": {"status": "running", "updated_at": time.time()}}))
    before = cache.stat()
    assert reap_cache(cache, STALE_AFTER, time.time()) == {}
    after = cache.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.parametrize(
    "content",
    [
        b'{"a": {"status": "running", "updated_at": 1',  # cut short mid-write
        b"[1, 2, 3]",
        b'{"a": "running"}',
        b"\xff\xfe not utf-8",
        b"null",
    ],
)
def test_a_corrupt_cache_is_left_byte_for_byte_intact(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cleaner")
    cache = tmp_path / "jobs.json"
    cache.write_bytes(content)
    os.utime(cache, (1_600_000_000, 1_600_000_000))
    before = cache.stat()
    reaper, state = reaper_for(cache)
    try:
        reports = [reaper.cycle() for _ in range(3)]
        # Logged once, not every cycle.
        assert sum("job cache left untouched" in r.getMessage() for r in caplog.records) == 1
        forced = reaper.force_clean(dry_run=False)
    finally:
        reaper.close()
    assert cache.read_bytes() == content
    after = cache.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert all(any(e.startswith("cache:") for e in r.errors.messages) for r in reports)
    assert forced.errors and forced.cache is None
    assert state.errors["cache"] == 4
    with pytest.raises(CacheError):
        read_cache(cache)


def test_a_missing_cache_is_nothing_to_do(tmp_path: Path) -> None:
    reaper, state = reaper_for(tmp_path / "absent.json")
    try:
        report = reaper.cycle()
    finally:
        reaper.close()
    assert report.errors.messages == []
    assert report.cache_reaped == {}
    assert not (tmp_path / "absent.json").exists()
    assert state.errors == {}


def test_a_file_replaced_underneath_makes_the_rewrite_start_over(tmp_path: Path) -> None:
    cache = tmp_path / "jobs.json"
    old = time.time() - 999
    cache.write_text(json.dumps({"a": {"status": "running", "updated_at": old}}))
    calls = 0

    def select(record: Mapping[str, object]) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            # A writer that ignores the lock replaces the file while we decide.
            new = tmp_path / "new.json"
            new.write_text(
                json.dumps(
                    {
                        "a": {"status": "running", "updated_at": old},
                        "b": {"status": "queued", "updated_at": time.time()},
                    }
                )
            )
            os.replace(new, cache)
        return record.get("status") == "running"

    removed = rewrite_cache(cache, select)
    assert removed == {"running": 1}
    assert calls == 3  # one record in the first pass, two after starting over
    assert set(json.loads(cache.read_text())) == {"b"}


def test_rewrite_waits_for_the_apis_lock(tmp_path: Path) -> None:
    cache = tmp_path / "jobs.json"
    cache.write_text(json.dumps({"a": {"status": "running", "updated_at": time.time() - 999}}))
    with cache.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(CacheError, match="locked"):
            rewrite_cache(cache, lambda r: True, lock_wait=0.2)
    assert json.loads(cache.read_text())  # untouched while locked
    assert reap_cache(cache, STALE_AFTER, time.time()) == {"running": 1}


# A stand-in for the API: appends jobs under the same flock protocol (lock, make sure the
# path still names the locked file, read, add, rewrite in place), with only a breath
# between two writes.
WRITER = r"""
import fcntl, json, os, sys, time
path, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    while True:
        fd = os.open(path, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            os.close(fd)
            continue
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
        jobs = json.loads(data)
        now = time.time()
        jobs[f"w{i}"] = {"status": "running", "updated_at": now}
        jobs[f"ghost{i}"] = {"status": "queued", "updated_at": now - 1000}
        out = json.dumps(jobs).encode()
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, out)
        os.fsync(fd)
        os.close(fd)
        break
    time.sleep(0.002)
"""


def test_a_concurrent_writer_loses_no_job_while_the_cleaner_rewrites(tmp_path: Path) -> None:
    cache = tmp_path / "jobs.json"
    # Old finished jobs make each rewrite take a while: a wide window for a lost update.
    filler = {f"done{i}": {"status": "done", "updated_at": 1_600_000_000} for i in range(5000)}
    cache.write_text(json.dumps(filler))
    count = 200
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(cache), str(count)])
    reaper, state = reaper_for(cache)
    cycles = 0
    try:
        while writer.poll() is None:
            report = reaper.cycle()
            assert report.errors.messages == []
            cycles += 1
        assert writer.returncode == 0
        reaper.cycle()
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait()
        reaper.close()
    final = json.loads(cache.read_text())
    assert set(final) == {f"w{i}" for i in range(count)} | set(filler)  # nothing lost
    assert state.jobs_reaped == {"cache": {"queued": count}}  # every ghost, exactly once
    assert cycles > 1


@pytest.mark.parametrize(
    ("cache_timezone", "reaped"), [("America/Sao_Paulo", False), ("Asia/Tokyo", True)]
)
def test_the_reaper_reads_naive_cache_times_in_the_configured_zone(
    tmp_path: Path, cache_timezone: str, reaped: bool
) -> None:
    from zoneinfo import ZoneInfo

    # An app in Sao Paulo wrote datetime.now().isoformat() 10 s ago. Read in Sao Paulo's
    # zone the job is fresh; read in Tokyo's (12 h ahead) it looks 12 h old.
    written = (datetime.now(ZoneInfo("America/Sao_Paulo")) - timedelta(seconds=10)).replace(
        tzinfo=None
    )
    cache = tmp_path / "jobs.json"
    cache.write_text(json.dumps({"j": {"status": "running", "updated_at": written.isoformat()}}))
    reaper, _ = reaper_for(cache, cache_timezone=cache_timezone)
    try:
        report = reaper.cycle()
    finally:
        reaper.close()
    assert report.cache_reaped == ({"running": 1} if reaped else {})
    assert (json.loads(cache.read_text()) == {}) is reaped
