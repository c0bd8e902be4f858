"""The collector against a real PostgreSQL: exact counts, one connection, faults."""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cleaner import dsn as dsn_mod
from cleaner.config import Config
from cleaner.state import State, StateStore
from exporter.collector import APPLICATION_NAME, LimpezaCollector
from tests.fixtures.postgres import JobsDatabase

pytestmark = pytest.mark.integration

# (id, status, age of updated_at in seconds); stale_after is running 3m, queued 2m.
KNOWN_JOBS: list[tuple[str | int, str, float | None]] = [
    ("r1", "running", 10),
    ("r2", "running", 170),
    ("r3", "running", 400),  # stale
    ("r4", "running", 3600),  # stale
    ("r5", "running", 86400),  # stale
    ("q1", "queued", 5),
    ("q2", "queued", 200),  # stale
    ("q3", "queued", 7200),  # stale
    ("d1", "done", 86400),
    ("d2", "done", 30),
    ("e1", "error", 500),
]


def exporter_config(jobs_db: JobsDatabase, tmp_path: Path, **exporter: Any) -> Config:
    (tmp_path / "uploads").mkdir(exist_ok=True)
    return jobs_db.config(
        state_file=str(tmp_path / "state.json"),
        files={"directories": [str(tmp_path / "uploads")]},
        exporter={"database_timeout": "1s", **exporter},
    )


#: Families that describe the jobs table: they carry its identity, the ``table`` label.
TABLE_FAMILIES = frozenset(
    {
        "limpeza_database_up",
        "limpeza_jobs",
        "limpeza_jobs_active",
        "limpeza_jobs_stale",
        "limpeza_jobs_oldest_age_seconds",
    }
)


class TableRegistry(CollectorRegistry):
    """A registry whose ``get_sample_value`` adds the table's label to the table's families."""

    def __init__(self, table: str) -> None:
        super().__init__()
        self.table = table

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        if name in TABLE_FAMILIES:
            labels = {**(labels or {}), "table": self.table}
        return super().get_sample_value(name, labels)


def collector_for(config: Config) -> tuple[CollectorRegistry, LimpezaCollector]:
    assert config.jobs.database is not None
    registry = TableRegistry(config.jobs.database.name)
    collector = LimpezaCollector(config, version="test")
    registry.register(collector)
    return registry, collector


def test_known_table_gives_exact_counts(jobs_db: JobsDatabase, tmp_path: Path) -> None:
    jobs_db.insert_many(KNOWN_JOBS)
    registry, collector = collector_for(exporter_config(jobs_db, tmp_path))
    try:
        v = registry.get_sample_value
        assert v("limpeza_database_up") == 1
        # The table's identity: where it is, never who connects (the DSN's user info).
        config = exporter_config(jobs_db, tmp_path)
        assert config.jobs.database is not None and config.jobs.database.dsn
        secrets = dsn_mod.parse(config.jobs.database.dsn).secrets
        table = registry.table  # type: ignore[attr-defined]
        assert table.endswith("/jobs") and "@" not in table
        assert secrets and not any(secret in table for secret in secrets)
        assert v("limpeza_jobs", {"status": "running"}) == 5
        assert v("limpeza_jobs", {"status": "queued"}) == 3
        assert v("limpeza_jobs_active") == 8
        assert v("limpeza_jobs_stale", {"status": "running"}) == 3
        assert v("limpeza_jobs_stale", {"status": "queued"}) == 2
        # Only active statuses are counted in the table (one indexed query per scrape).
        assert v("limpeza_jobs", {"status": "done"}) is None
        assert v("limpeza_cache_up") is None
    finally:
        collector.close()


def test_oldest_active_job_age_per_status(jobs_db: JobsDatabase, tmp_path: Path) -> None:
    jobs_db.insert_many(KNOWN_JOBS)
    registry, collector = collector_for(exporter_config(jobs_db, tmp_path))
    try:
        v = registry.get_sample_value
        running = v("limpeza_jobs_oldest_age_seconds", {"status": "running"})
        queued = v("limpeza_jobs_oldest_age_seconds", {"status": "queued"})
        assert running is not None and 86400 <= running < 86400 + 60
        assert queued is not None and 7200 <= queued < 7200 + 60
        assert v("limpeza_jobs_oldest_age_seconds", {"status": "done"}) is None
        jobs_db.execute("DELETE FROM jobs WHERE status = 'queued'")
        assert v("limpeza_jobs_oldest_age_seconds", {"status": "queued"}) == 0
    finally:
        collector.close()


def test_empty_table_counts_zero_per_active_status(jobs_db: JobsDatabase, tmp_path: Path) -> None:
    registry, collector = collector_for(exporter_config(jobs_db, tmp_path))
    try:
        v = registry.get_sample_value
        assert v("limpeza_database_up") == 1
        assert v("limpeza_jobs_active") == 0
        for status in ("running", "queued"):
            assert v("limpeza_jobs", {"status": status}) == 0
            assert v("limpeza_jobs_stale", {"status": status}) == 0
    finally:
        collector.close()


def _exporter_backends(jobs_db: JobsDatabase) -> list[int]:
    rows = jobs_db.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
        (APPLICATION_NAME, jobs_db.name),
    )
    return [int(r[0]) for r in rows]


def test_one_connection_is_reused_across_scrapes(jobs_db: JobsDatabase, tmp_path: Path) -> None:
    registry, collector = collector_for(exporter_config(jobs_db, tmp_path))
    try:
        generate_latest(registry)
        first = _exporter_backends(jobs_db)
        assert len(first) == 1
        for _ in range(5):
            generate_latest(registry)
        assert _exporter_backends(jobs_db) == first
    finally:
        collector.close()
    assert _exporter_backends(jobs_db) == []


def test_database_stopped_then_back(
    jobs_db: JobsDatabase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs_db.insert_many(KNOWN_JOBS)
    config = exporter_config(jobs_db, tmp_path)
    StateStore(config.state_file).save(State(sweeps=4, files_removed={"sessions": 2}))
    registry, collector = collector_for(config)
    caplog.set_level(logging.INFO, logger="exporter.collector")
    v = registry.get_sample_value
    try:
        assert v("limpeza_database_up") == 1
        jobs_db.server.stop()
        for _ in range(3):
            assert v("limpeza_database_up") == 0
        assert v("limpeza_jobs_active") is None  # no number rather than a wrong one
        assert v("limpeza_state_up") == 1  # the rest still comes
        assert v("limpeza_sweeps_total") == 4
        assert v("limpeza_files_removed_total", {"rule": "sessions"}) == 2
        down = [r for r in caplog.records if r.getMessage().startswith("database:")]
        assert len(down) == 1, [r.getMessage() for r in down]  # once per change
        assert jobs_db.password not in caplog.text

        jobs_db.server.start()
        assert v("limpeza_database_up") == 1  # reconnected
        assert v("limpeza_jobs_active") == 8
        assert any("readable again" in r.getMessage() for r in caplog.records)
    finally:
        if not jobs_db.server.running:
            jobs_db.server.start()
        collector.close()


def test_slow_database_gives_up_within_the_timeout(jobs_db: JobsDatabase, tmp_path: Path) -> None:
    """A table locked by another session: the count gives up, the scrape still answers."""
    jobs_db.insert_many(KNOWN_JOBS)
    registry, collector = collector_for(exporter_config(jobs_db, tmp_path))
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        with contextlib.closing(jobs_db.connect()) as conn:
            conn.autocommit = False
            with conn.cursor() as cur:
                cur.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
                locked.set()
                release.wait(60)
            conn.rollback()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(30)
        v = registry.get_sample_value
        assert v("limpeza_database_up") == 0
        assert v("limpeza_jobs_active") is None
        assert v("limpeza_exporter_build_info", {"version": "test"}) == 1
        release.set()
        holder.join(30)
        assert v("limpeza_database_up") == 1
        assert v("limpeza_jobs_active") == 8
    finally:
        release.set()
        holder.join(30)
        collector.close()


def test_wrong_password_is_down_and_never_logged(
    jobs_db: JobsDatabase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "uploads").mkdir()
    wrong = "Wr0ng-Secret-Value-xyz"
    config = jobs_db.config(
        state_file=str(tmp_path / "state.json"),
        files={"directories": [str(tmp_path / "uploads")]},
    )
    assert config.jobs.database is not None
    bad_dsn = jobs_db.dsn.replace(jobs_db.password, wrong)
    config = replace(
        config, jobs=replace(config.jobs, database=replace(config.jobs.database, dsn=bad_dsn))
    )
    caplog.set_level(logging.DEBUG)
    registry, collector = collector_for(config)
    try:
        assert registry.get_sample_value("limpeza_database_up") == 0
        assert registry.get_sample_value("limpeza_state_up") == 0
    finally:
        collector.close()
    assert "database:" in caplog.text
    assert wrong not in caplog.text


def test_restart_between_scrapes_reconnects_in_the_next_scrape(
    jobs_db: JobsDatabase, tmp_path: Path
) -> None:
    jobs_db.insert_many(KNOWN_JOBS)
    registry, collector = collector_for(exporter_config(jobs_db, tmp_path))
    try:
        generate_latest(registry)
        before = _exporter_backends(jobs_db)
        jobs_db.server.stop()
        jobs_db.server.start()
        # The kept connection died with the old server; the scrape opens a new one.
        assert registry.get_sample_value("limpeza_database_up") == 1
        assert registry.get_sample_value("limpeza_jobs_active") == 8
        after = _exporter_backends(jobs_db)
        assert len(after) == 1 and after != before
    finally:
        if not jobs_db.server.running:
            jobs_db.server.start()
        collector.close()
