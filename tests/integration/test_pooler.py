"""The reaper through PgBouncer as Supabase runs it (port 6543: transaction pooling).

A transaction-mode pooler hands a server connection to whichever client has a transaction
to run, so anything a client leaves set on it (a timeout, ``enable_seqscan``, a
session-level advisory lock) is inherited by the next one: the API. These tests run
limpeza and "API" clients through a real PgBouncer with pools of one and two server
connections (and in session mode, and direct) and look at what the API sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from cleaner.config import Config
from cleaner.jobs.connection import KeptConnection
from cleaner.jobs.database import advisory_key, count_database
from cleaner.state import State
from devtools.pgbouncer import PgBouncer
from tests.fixtures.postgres import JobsDatabase
from tests.integration.recording import RecordingReaper

pytestmark = pytest.mark.integration

RUNNING = 180  # stale_after.running of the defaults (3m)
ROUTES = ["transaction-1", "transaction-2", "session-2", "direct"]
SETTINGS = (
    "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), "
    "current_setting('idle_in_transaction_session_timeout'), current_setting('enable_seqscan')"
)
API_DEFAULTS = ("0", "0", "0", "on")


def route_dsn(route: str, jobs_db: JobsDatabase, start: Callable[..., PgBouncer]) -> str:
    if route == "direct":
        return jobs_db.dsn
    mode, size = route.split("-")
    return start(mode, int(size)).dsn(jobs_db.name)


def through(config: Config, dsn: str, **database: Any) -> Config:
    """``config`` with its database reached at ``dsn`` (and other database keys)."""
    assert config.jobs.database is not None
    db = dataclasses.replace(config.jobs.database, dsn=dsn, **database)
    return dataclasses.replace(config, jobs=dataclasses.replace(config.jobs, database=db))


@contextlib.contextmanager
def api_client(dsn: str) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(dsn, connect_timeout=10, application_name="api")
    try:
        yield conn
    finally:
        conn.close()


def background(work: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def advisory_locks(jobs_db: JobsDatabase) -> list[Any]:
    return jobs_db.execute(
        "SELECT pid, objid, granted FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )


@pytest.mark.parametrize("route", ROUTES)
def test_the_api_never_sees_a_limpeza_setting_or_lock(
    jobs_db: JobsDatabase, pgbouncer_factory: Callable[..., PgBouncer], route: str
) -> None:
    dsn = route_dsn(route, jobs_db, pgbouncer_factory)
    config = through(jobs_db.config(), dsn)
    db = config.jobs.database
    assert db is not None
    jobs_db.insert_many(
        [(f"stale{i}", "running", RUNNING + 60) for i in range(10)]
        + [("held", "running", RUNNING + 60), ("fresh", "running", 5)]
    )
    api_errors: list[BaseException] = []

    def slow_api() -> None:
        # A long query and a row lock held for a few seconds, through the same pooler.
        try:
            with api_client(dsn) as api, api.cursor() as cur:
                cur.execute("SELECT id FROM jobs WHERE id = 'held' FOR UPDATE")
                cur.execute("SELECT pg_sleep(3)")
                api.commit()
                cur.execute("SELECT pg_sleep(2)")
                api.commit()
        except BaseException as exc:
            api_errors.append(exc)

    thread = background(slow_api)
    reaper = RecordingReaper(config.jobs, State(), interval=5.0)
    try:
        report = reaper.cycle()  # as `limpeza-cleaner once` runs it
        status = reaper.status()["database"]  # as `limpeza-cleaner status`
    finally:
        reaper.close()
    scrape = KeptConnection(db, application_name="limpeza-exporter", statement_timeout=3.0)
    try:  # as the exporter counts on a scrape
        counts = scrape.run(
            lambda c: count_database(c, db, config.jobs.stale_after, statement_timeout=3.0)
        )
    finally:
        scrape.close()
    thread.join(timeout=60)
    assert not thread.is_alive() and api_errors == []
    assert report.errors.messages == [] and status["error"] is None
    assert report.database_locked is True
    assert 10 <= report.database_reaped["running"] <= 11
    assert counts.by_status["running"] >= 1
    # Every server connection of the pool, each held by an open API transaction at once.
    size = 1 if route.endswith("-1") else 2
    with contextlib.ExitStack() as stack:
        apis = [stack.enter_context(api_client(dsn)) for _ in range(size)]
        seen = []
        for api in apis:
            with api.cursor() as cur:
                cur.execute(SETTINGS)
                seen.append(cur.fetchone())
                cur.execute("SELECT pg_backend_pid()")
        assert seen == [API_DEFAULTS] * size
        for api in apis:
            api.rollback()
    assert advisory_locks(jobs_db) == []


@pytest.mark.parametrize("route", ROUTES)
def test_two_cleaners_reap_each_job_once_and_leave_no_lock(
    jobs_db: JobsDatabase, pgbouncer_factory: Callable[..., PgBouncer], route: str
) -> None:
    dsn = route_dsn(route, jobs_db, pgbouncer_factory)
    jobs_db.execute("CREATE TABLE reaped (id text NOT NULL, pid int NOT NULL)")
    jobs_db.execute("GRANT INSERT ON reaped TO limpeza_test")
    jobs_db.execute(
        "CREATE FUNCTION note_reaped() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN INSERT INTO reaped VALUES (NEW.id, pg_backend_pid()); RETURN NEW; END $$"
    )
    jobs_db.execute(
        "CREATE TRIGGER note_reaped AFTER UPDATE OF status ON jobs "
        "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
        "EXECUTE FUNCTION note_reaped()"
    )
    config = through(jobs_db.config({"database": {"batch_size": 3}}), dsn)
    key = advisory_key(config.jobs.database)  # type: ignore[arg-type]
    states = [State(), State()]
    reapers = [RecordingReaper(config.jobs, s, interval=5.0) for s in states]
    rounds, per_round = 12, 10
    barrier = threading.Barrier(3)
    errors: list[str] = []
    overlaps: list[Any] = []
    stop = threading.Event()

    def run(reaper: RecordingReaper) -> None:
        for _ in range(rounds):
            barrier.wait(timeout=120)
            errors.extend(reaper.cycle().errors.messages)
            barrier.wait(timeout=120)

    def watch() -> None:
        # PostgreSQL grants an advisory lock once; two holders would show here.
        with contextlib.closing(jobs_db.connect()) as conn, conn.cursor() as cur:
            while not stop.is_set():
                cur.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND objid::bigint = (%s::bigint & 4294967295)",
                    (key,),
                )
                row = cur.fetchone()
                if row and row[0] > 1:
                    overlaps.append(row)
                time.sleep(0.01)

    watcher = background(watch)
    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in reapers]
    for thread in threads:
        thread.start()
    try:
        for n in range(rounds):
            jobs_db.insert_many(
                [(f"r{n}-{i}", "running", RUNNING + 10 + i) for i in range(per_round)]
            )
            barrier.wait(timeout=120)
            barrier.wait(timeout=120)
    finally:
        for thread in threads:
            thread.join(timeout=120)
        for reaper in reapers:
            reaper.close()
        stop.set()
        watcher.join(timeout=30)
    last = RecordingReaper(config.jobs, State(), interval=5.0)
    try:
        last_report = last.cycle()  # catches rows both skipped
    finally:
        last.close()
    assert errors == [] and overlaps == []
    reaped_ids = [row[0] for row in jobs_db.execute("SELECT id FROM reaped")]
    assert sorted(reaped_ids) == sorted({*reaped_ids})  # none reaped twice
    assert len(reaped_ids) == rounds * per_round
    counted = sum(s.jobs_reaped.get("database", {}).get("running", 0) for s in states)
    assert counted + last_report.database_reaped.get("running", 0) == rounds * per_round
    assert advisory_locks(jobs_db) == []
