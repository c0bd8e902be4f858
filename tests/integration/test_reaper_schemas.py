"""The reaper against the schemas APIs really have: ENUM statuses, NULL timestamps, zones."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from cleaner.jobs.connection import connect
from cleaner.jobs.database import count_database
from cleaner.state import State
from tests.fixtures.postgres import JobsDatabase
from tests.integration.recording import RecordingReaper

pytestmark = pytest.mark.integration

RUNNING = 180  # stale_after.running of the defaults (3m)


def reap_once(jobs_db: JobsDatabase, database: dict[str, Any]) -> dict[str, Any]:
    """One reaper cycle with ``database`` keys; its report's counts and the status check."""
    config = jobs_db.config({"database": database})
    reaper = RecordingReaper(config.jobs, State(), interval=5.0)
    try:
        report = reaper.cycle()
        status = reaper.status()["database"]
    finally:
        reaper.close()
    assert report.errors.messages == []
    return {"reaped": report.database_reaped, "status": status}


@pytest.mark.parametrize(
    "status_type", ["enum", "varchar(32)", "text"], ids=["enum", "varchar", "text"]
)
def test_every_status_type_counts_and_reaps(jobs_db: JobsDatabase, status_type: str) -> None:
    if status_type == "enum":
        jobs_db.execute(
            "CREATE TYPE job_state AS ENUM ('queued', 'running', 'done', 'failed', 'error')"
        )
        status_type = "job_state"
    jobs_db.execute(
        f"CREATE TABLE typed (id text PRIMARY KEY, status {status_type} NOT NULL, "
        "updated_at timestamptz, reason text)"
    )
    jobs_db.execute("GRANT SELECT, UPDATE ON typed TO limpeza_test")
    jobs_db.execute(
        "INSERT INTO typed VALUES ('stale', 'running', now() - interval '1 hour', NULL), "
        "('fresh', 'running', now(), NULL), ('queued', 'queued', now(), NULL), "
        "('done', 'done', now() - interval '1 day', NULL)"
    )
    database = {"table": "typed", "error_status": "failed", "error_message_column": "reason"}
    result = reap_once(jobs_db, database)
    assert result["reaped"] == {"running": 1}
    assert result["status"]["jobs"] == {"queued": 1, "running": 1}
    rows = dict(jobs_db.execute("SELECT id, status::text FROM typed"))
    assert rows == {"stale": "failed", "fresh": "running", "queued": "queued", "done": "done"}
    if status_type == "job_state":
        assert "(status::text)" in result["status"]["recommended_index"]


def test_null_timestamps_fall_back_to_the_next_column(jobs_db: JobsDatabase) -> None:
    jobs_db.execute(
        "CREATE TABLE beats (id text PRIMARY KEY, status text NOT NULL, "
        "heartbeat_at timestamptz, updated_at timestamptz, created_at timestamptz NOT NULL)"
    )
    jobs_db.execute("GRANT SELECT, UPDATE ON beats TO limpeza_test")
    jobs_db.execute(
        "INSERT INTO beats VALUES "
        # Never sent a heartbeat nor an update: only created_at says it is long dead.
        "('silent', 'running', NULL, NULL, now() - interval '2 hours'), "
        # An old update but a fresh heartbeat: alive.
        "('beating', 'running', now(), now() - interval '2 hours', now() - interval '3 hours'),"
        # No heartbeat column value, a fresh update: alive.
        "('updated', 'running', NULL, now(), now() - interval '3 hours'), "
        "('old-beat', 'running', now() - interval '1 hour', now(), now())"
    )
    database = {
        "table": "beats",
        "timestamp_columns": ["heartbeat_at", "updated_at", "created_at"],
    }
    result = reap_once(jobs_db, database)
    assert result["reaped"] == {"running": 2}
    assert result["status"]["stale"] == {"queued": 0, "running": 0}
    rows = dict(jobs_db.execute("SELECT id, status FROM beats"))
    assert rows == {
        "silent": "error",
        "beating": "running",
        "updated": "running",
        "old-beat": "error",
    }
    index = result["status"]["recommended_index"]
    assert index == (
        "CREATE INDEX ON beats (status, (COALESCE(heartbeat_at, updated_at, created_at)))"
    )
    jobs_db.execute(f"{index.replace('CREATE INDEX', 'CREATE INDEX beats_alive')}")
    assert reap_once(jobs_db, database)["status"]["index"]["usable"] is True


@pytest.mark.parametrize("server_zone", ["America/Sao_Paulo", "UTC"])
@pytest.mark.parametrize("column_type", ["timestamp", "timestamptz"])
def test_staleness_ignores_the_servers_time_zone(
    jobs_db: JobsDatabase, server_zone: str, column_type: str
) -> None:
    jobs_db.execute(f"ALTER DATABASE {jobs_db.name} SET timezone = '{server_zone}'")
    jobs_db.execute(
        f"CREATE TABLE zoned (id text PRIMARY KEY, status text NOT NULL, updated_at {column_type})"
    )
    jobs_db.execute("GRANT SELECT, UPDATE ON zoned TO limpeza_test")
    # The API writes UTC wall time into a column without a zone (and an instant otherwise).
    written = "now() AT TIME ZONE 'UTC'" if column_type == "timestamp" else "now()"
    jobs_db.execute(
        f"INSERT INTO zoned VALUES ('stale', 'running', {written} - interval '1 hour'), "
        f"('recent', 'running', {written} - interval '10 seconds'), "
        f"('queued', 'queued', {written} - interval '1 hour')"
    )
    config = jobs_db.config({"database": {"table": "zoned"}})
    db = config.jobs.database
    assert db is not None
    with contextlib.closing(connect(db, application_name="test")) as conn:
        counts = count_database(conn, db, config.jobs.stale_after)
    assert counts.stale == {"queued": 1, "running": 1}
    result = reap_once(jobs_db, {"table": "zoned"})
    assert result["reaped"] == {"queued": 1, "running": 1}
    rows = dict(jobs_db.execute("SELECT id, status FROM zoned"))
    assert rows == {"stale": "error", "recent": "running", "queued": "error"}


def test_a_column_written_in_another_zone_is_read_in_that_zone(jobs_db: JobsDatabase) -> None:
    jobs_db.execute(
        "CREATE TABLE local (id text PRIMARY KEY, status text NOT NULL, updated_at timestamp)"
    )
    jobs_db.execute("GRANT SELECT, UPDATE ON local TO limpeza_test")
    # Written in Tokyo wall time (UTC+9): one recent job, one an hour old.
    jobs_db.execute(
        "INSERT INTO local VALUES "
        "('recent', 'running', (now() AT TIME ZONE 'Asia/Tokyo') - interval '10 seconds'), "
        "('stale', 'running', (now() AT TIME ZONE 'Asia/Tokyo') - interval '1 hour')"
    )
    result = reap_once(jobs_db, {"table": "local", "timestamp_timezone": "Asia/Tokyo"})
    assert result["reaped"] == {"running": 1}
    assert dict(jobs_db.execute("SELECT id, status FROM local")) == {
        "recent": "running",
        "stale": "error",
    }
