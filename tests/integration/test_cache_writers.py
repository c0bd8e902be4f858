"""APIs that write the job cache their own way lose nothing to the cleaner's rewrite.

Real writer processes (bench/cache_writers.py) of each style write while the reaper loops
on the same file; a cache owned by another user is reaped in place by a cleaner in its
group; what is not a regular file is refused without blocking.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.cache_writers import STYLES, run_one
from cleaner.jobs.cache import CacheError, read_cache, reap_cache

pytestmark = pytest.mark.integration

STALE_AFTER = {"running": 180.0, "queued": 120.0}
OVERWRITTEN = "landed during the rewrite"


@pytest.mark.parametrize("style", STYLES)
def test_a_writer_of_each_style_loses_no_job_to_the_reaper(style: str, tmp_path: Path) -> None:
    outcome = run_one(style, 20.0, 5.0, tmp_path)
    assert outcome.writes >= 50
    assert outcome.stale_left == 0  # every stale job went
    assert outcome.reaped >= outcome.writes // 10
    overwritten = sum(n for reason, n in outcome.reap_errors.items() if OVERWRITTEN in reason)
    if style in ("replace", "flock"):
        # os.replace puts a new inode at the path: an in-place write can only hit the old
        # one. Under the lock nothing else writes. Either way nothing can be lost.
        assert outcome.lost == 0
        assert overwritten == 0
    else:
        # A write in place that lands between the check and the write is overwritten: a
        # window of microseconds, and every such loss is reported (README: the job cache
        # protocol). At 20 writes/s it almost never happens.
        assert outcome.lost <= overwritten


def _run_as(uid: int, gid: int, groups: list[int], work: Callable[[], object]) -> dict[str, object]:
    """Runs ``work()`` in a forked child with the given ids; returns what it returned."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            result: dict[str, object] = {"ok": work()}
        except BaseException as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user")
def test_a_cache_owned_by_the_apis_user_is_reaped_in_place_by_its_group() -> None:
    # tmp_path's parents are root's alone; the other users need a way in.
    tmp_path = Path(tempfile.mkdtemp(prefix="limpeza-cache-owner-"))
    try:
        _reaped_in_place_by_its_group(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _reaped_in_place_by_its_group(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    app_uid, app_gid = nobody.pw_uid, 4242  # the API's user and group
    cleaner_uid, cleaner_gid = 4343, 4343  # the cleaner's user, in the API's group
    tmp_path.chmod(0o755)
    cache = tmp_path / "jobs.json"
    cache.write_text(
        json.dumps(
            {
                "old": {"status": "running", "updated_at": 1_600_000_000},
                "new": {"status": "running", "updated_at": 4_000_000_000},
            }
        )
    )
    os.chown(cache, app_uid, app_gid)
    cache.chmod(0o664)
    inode = cache.stat().st_ino

    def reap() -> dict[str, int]:
        return reap_cache(cache, STALE_AFTER, 1_700_000_000.0)

    outside = _run_as(cleaner_uid, cleaner_gid, [cleaner_gid], reap)
    assert "cannot write" in str(outside.get("error")) and "4242" in str(outside.get("error"))
    assert set(json.loads(cache.read_text())) == {"old", "new"}  # untouched

    inside = _run_as(cleaner_uid, cleaner_gid, [cleaner_gid, app_gid], reap)
    assert inside == {"ok": {"running": 1}}
    after = cache.stat()
    assert after.st_ino == inode
    assert (after.st_uid, after.st_gid, after.st_mode & 0o7777) == (app_uid, app_gid, 0o664)
    assert set(json.loads(cache.read_text())) == {"new"}


def _within(seconds: float, work: Callable[[], object]) -> dict[str, object]:
    """``work()`` in a thread; fails the test when it is still running after ``seconds``."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    return box


def test_a_fifo_at_the_cache_path_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "jobs.json"
    os.mkfifo(fifo)
    for work in (lambda: reap_cache(fifo, STALE_AFTER, 0.0), lambda: read_cache(fifo)):
        box = _within(10.0, work)  # an upper bound: a FIFO with no writer blocks forever
        assert isinstance(box["error"], CacheError)
        assert "not a regular file" in str(box["error"])


def test_a_symlink_at_the_cache_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"a": {"status": "running", "updated_at": 1_600_000_000}}))
    link = tmp_path / "jobs.json"
    link.symlink_to(target)
    for work in (lambda: reap_cache(link, STALE_AFTER, 1_700_000_000.0), lambda: read_cache(link)):
        box = _within(10.0, work)
        assert isinstance(box["error"], CacheError)
        assert "symlink" in str(box["error"])
    assert set(json.loads(target.read_text())) == {"a"}
