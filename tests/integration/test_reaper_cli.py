"""limpeza-cleaner force-clean, status and the daemon, as real processes on a real database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cleaner.state import read_state
from tests.fixtures.postgres import JobsDatabase

pytestmark = pytest.mark.integration

CLEANER = [sys.executable, "-m", "cleaner"]


def write_config(
    tmp_path: Path, jobs_db: JobsDatabase | None, cache: Path | None, **jobs: Any
) -> Path:
    uploads = tmp_path / "uploads"
    uploads.mkdir(exist_ok=True)
    section: dict[str, Any] = {"cache_file": str(cache) if cache else None, **jobs}
    if jobs_db is not None:
        section["database"] = {"table": jobs_db.table, "error_message_column": "error_message"}
    raw = {
        "interval": "1s",
        "state_file": str(tmp_path / "state" / "state.json"),
        "audit_log": None,
        "files": {"directories": [str(uploads)]},
        "jobs": section,
    }
    path = tmp_path / "limpeza.yml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def env_for(jobs_db: JobsDatabase | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMPEZA_")}
    if jobs_db is not None:
        env["LIMPEZA_DATABASE_URL"] = jobs_db.dsn
    return env


def cli(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLEANER, "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def seed(jobs_db: JobsDatabase, cache: Path) -> None:
    jobs_db.insert_many(
        [
            ("r-fresh", "running", 5),
            ("r-stale", "running", 900),
            ("q-fresh", "queued", 1),
            ("d-old", "done", 86400),
        ]
    )
    now = time.time()
    cache.write_text(
        json.dumps(
            {
                "c-run": {"status": "running", "updated_at": now},
                "c-queue": {"status": "queued", "updated_at": now - 5},
                "c-done": {"status": "done", "updated_at": now - 9999},
            }
        )
    )


def test_force_clean_is_refused_without_yes(tmp_path: Path, jobs_db: JobsDatabase) -> None:
    cache = tmp_path / "jobs.json"
    seed(jobs_db, cache)
    before_rows, before_cache = jobs_db.rows(), cache.read_bytes()
    result = cli(write_config(tmp_path, jobs_db, cache), env_for(jobs_db), "force-clean")
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert jobs_db.rows() == before_rows
    assert cache.read_bytes() == before_cache
    assert not (tmp_path / "state" / "state.json").exists()


def test_force_clean_dry_run_changes_nothing(tmp_path: Path, jobs_db: JobsDatabase) -> None:
    cache = tmp_path / "jobs.json"
    seed(jobs_db, cache)
    before_rows, before_cache = jobs_db.rows(), cache.read_bytes()
    config = write_config(tmp_path, jobs_db, cache)
    result = cli(config, env_for(jobs_db), "force-clean", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would end 5 active jobs" in result.stdout
    assert "would set 'error' on 3 jobs (queued: 1, running: 2)" in result.stdout
    assert "would remove 2 entries (queued: 1, running: 1)" in result.stdout
    assert jobs_db.rows() == before_rows
    assert cache.read_bytes() == before_cache
    as_json = cli(config, env_for(jobs_db), "force-clean", "--dry-run", "--json")
    assert json.loads(as_json.stdout) == {
        "dry_run": True,
        "database": {"running": 2, "queued": 1},
        "cache": {"running": 1, "queued": 1},
        "total": 5,
        "errors": [],
        "sources": ["database", "cache"],
    }
    assert jobs_db.rows() == before_rows


def test_force_clean_yes_ends_every_active_job(tmp_path: Path, jobs_db: JobsDatabase) -> None:
    cache = tmp_path / "jobs.json"
    seed(jobs_db, cache)
    result = cli(write_config(tmp_path, jobs_db, cache), env_for(jobs_db), "force-clean", "--yes")
    assert result.returncode == 0, result.stderr
    assert "ended 5 active jobs" in result.stdout
    rows = jobs_db.rows()
    assert {j: r["status"] for j, r in rows.items()} == {
        "r-fresh": "error",
        "r-stale": "error",
        "q-fresh": "error",
        "d-old": "done",
    }
    assert {rows[j]["error_message"] for j in ("r-fresh", "r-stale", "q-fresh")} == {"force-clean"}
    assert set(json.loads(cache.read_text())) == {"c-done"}
    state = read_state(tmp_path / "state" / "state.json")
    assert state.force_cleans == 1
    assert state.jobs_reaped == {
        "database": {"running": 2, "queued": 1},
        "cache": {"running": 1, "queued": 1},
    }
    assert jobs_db.password not in result.stdout + result.stderr


def test_force_clean_with_the_database_down_exits_1_and_says_why(
    tmp_path: Path, jobs_db: JobsDatabase
) -> None:
    config = write_config(tmp_path, jobs_db, None)
    jobs_db.server.stop()
    try:
        result = cli(config, env_for(jobs_db), "force-clean", "--yes")
    finally:
        jobs_db.server.start()
    assert result.returncode == 1
    assert "error: database" in result.stdout
    assert jobs_db.password not in result.stdout + result.stderr


def test_force_clean_only_one_source_leaves_the_other_alone(
    tmp_path: Path, jobs_db: JobsDatabase
) -> None:
    """A fleet ends the shared database's jobs once and clears each host's cache apart."""
    cache = tmp_path / "jobs.json"
    seed(jobs_db, cache)
    config, env = write_config(tmp_path, jobs_db, cache), env_for(jobs_db)
    before_rows, before_cache = jobs_db.rows(), cache.read_bytes()

    preview = cli(config, env, "force-clean", "--only", "cache", "--dry-run", "--json")
    assert preview.returncode == 0, preview.stderr
    assert json.loads(preview.stdout) == {
        "dry_run": True,
        "database": None,
        "cache": {"running": 1, "queued": 1},
        "total": 2,
        "errors": [],
        "sources": ["cache"],
    }
    assert (jobs_db.rows(), cache.read_bytes()) == (before_rows, before_cache)

    cleared = cli(config, env, "force-clean", "--only", "cache", "--yes")
    assert cleared.returncode == 0, cleared.stderr
    assert "ended 2 active jobs in the cache" in cleared.stdout
    assert "database" not in cleared.stdout
    assert set(json.loads(cache.read_text())) == {"c-done"}
    assert jobs_db.rows() == before_rows

    cache_now = cache.read_bytes()
    ended = cli(config, env, "force-clean", "--only", "database", "--yes", "--json")
    assert ended.returncode == 0, ended.stderr
    report = json.loads(ended.stdout)
    assert (report["database"], report["cache"], report["total"]) == (
        {"running": 2, "queued": 1},
        None,
        3,
    )
    assert cache.read_bytes() == cache_now
    assert {j: r["status"] for j, r in jobs_db.rows().items()} == {
        "r-fresh": "error",
        "r-stale": "error",
        "q-fresh": "error",
        "d-old": "done",
    }
    # Each run counts what it ended, in its own source.
    state = read_state(tmp_path / "state" / "state.json")
    assert state.force_cleans == 2
    assert state.jobs_reaped == {
        "database": {"running": 2, "queued": 1},
        "cache": {"running": 1, "queued": 1},
    }


def test_force_clean_only_cache_works_with_the_database_down(
    tmp_path: Path, jobs_db: JobsDatabase
) -> None:
    cache = tmp_path / "jobs.json"
    seed(jobs_db, cache)
    config, env = write_config(tmp_path, jobs_db, cache), env_for(jobs_db)
    jobs_db.server.stop()
    try:
        cleared = cli(config, env, "force-clean", "--only", "cache", "--yes", "--json")
        failed = cli(config, env, "force-clean", "--only", "database", "--yes", "--json")
    finally:
        jobs_db.server.start()
    assert cleared.returncode == 0, cleared.stderr
    assert json.loads(cleared.stdout)["errors"] == []
    assert set(json.loads(cache.read_text())) == {"c-done"}
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    # Not reached is "failed" (None), never "ended nothing" ({}).
    assert (report["database"], report["errors"]) == (None, ["database: down"])
    assert jobs_db.password not in failed.stdout + failed.stderr


def test_force_clean_refuses_an_unknown_source(tmp_path: Path) -> None:
    config = write_config(tmp_path, None, None)
    result = cli(config, env_for(None), "force-clean", "--only", "files", "--yes")
    assert result.returncode == 2
    assert "invalid choice: 'files'" in result.stderr


def test_status_only_reports_the_parts_asked_for(tmp_path: Path, jobs_db: JobsDatabase) -> None:
    cache = tmp_path / "jobs.json"
    seed(jobs_db, cache)
    config, env = write_config(tmp_path, jobs_db, cache), env_for(jobs_db)
    host = cli(config, env, "status", "--json", "--only", "files", "--only", "cache")
    assert host.returncode == 0, host.stderr
    report = json.loads(host.stdout)
    assert set(report) == {"now", "directories", "last_sweep", "jobs"}
    assert set(report["jobs"]) == {"cache"}
    assert report["jobs"]["cache"]["active"] == 2
    shared = cli(config, env, "status", "--json", "--only", "database")
    assert shared.returncode == 0, shared.stderr
    report = json.loads(shared.stdout)
    assert set(report) == {"now", "jobs"}
    assert set(report["jobs"]) == {"database"}
    assert report["jobs"]["database"]["active"] == 3
    text = cli(config, env, "status", "--only", "database")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[:2] == [
        "jobs:",
        "  database jobs: 3 active (queued: 1, running: 2); stale: queued: 0, running: 1",
    ]
    assert "last sweep" not in text.stdout
    assert "cache" not in text.stdout


def test_status_shows_jobs_and_the_index_advice(tmp_path: Path, jobs_db: JobsDatabase) -> None:
    cache = tmp_path / "jobs.json"
    seed(jobs_db, cache)
    config = write_config(tmp_path, jobs_db, cache)
    text = cli(config, env_for(jobs_db), "status")
    assert text.returncode == 0, text.stderr
    assert "database jobs: 3 active (queued: 1, running: 2); stale: queued: 0, running: 1" in (
        text.stdout
    )
    assert "recommended: CREATE INDEX ON jobs (status, updated_at)" in text.stdout
    assert f"cache {cache}: 2 active" in text.stdout
    jobs_db.execute("CREATE INDEX ON jobs (status, updated_at)")
    as_json = cli(config, env_for(jobs_db), "status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    jobs = json.loads(as_json.stdout)["jobs"]
    assert jobs["database"]["index"]["usable"] is True
    assert jobs["database"]["stale"] == {"queued": 0, "running": 1}
    assert jobs["cache"]["jobs"] == {"running": 1, "queued": 1, "done": 1}


def wait_for(what: str, check: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def test_the_daemon_reaps_a_real_database_and_survives_a_restart(
    tmp_path: Path, jobs_db: JobsDatabase
) -> None:
    cache = tmp_path / "jobs.json"
    cache.write_text(json.dumps({"ghost": {"status": "queued", "updated_at": time.time() - 999}}))
    jobs_db.insert_many([("first", "running", 900), ("alive", "running", 0)])
    config = write_config(tmp_path, jobs_db, cache)
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log_file:
        daemon = subprocess.Popen(
            [*CLEANER, "--config", str(config), "run"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env_for(jobs_db),
        )
    try:
        wait_for("the first stale job", lambda: jobs_db.statuses()["first"] == "error")
        wait_for("the cache ghost", lambda: json.loads(cache.read_text()) == {})
        jobs_db.server.stop()
        try:
            wait_for("the daemon to notice", lambda: "database down" in log_path.read_text())
            assert daemon.poll() is None  # still running without its database
            # Files are still swept while the database is away.
            old = tmp_path / "uploads" / "session_gone.json"
            old.write_text("{}")
            os.utime(old, (time.time() - 3 * 86400,) * 2)
            wait_for("a file sweep without the database", lambda: not old.exists())
        finally:
            jobs_db.server.start()
        jobs_db.insert("second", "queued", 900)
        wait_for("the job after the restart", lambda: jobs_db.statuses()["second"] == "error")
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
            raise
    text = log_path.read_text()
    assert code == 0, text
    assert jobs_db.statuses()["alive"] == "running"  # a live job is never reaped
    assert text.count("database down") == 1, text
    assert text.count("database back") == 1, text
    assert jobs_db.password not in text
    state = read_state(tmp_path / "state" / "state.json")
    assert state.jobs_reaped["database"] == {"running": 1, "queued": 1}
    assert state.jobs_reaped["cache"] == {"queued": 1}
    assert state.errors.get("database", 0) >= 1
    assert state.database_up is True
