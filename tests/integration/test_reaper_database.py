"""The job reaper against a real PostgreSQL server started by the suite."""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg2
import pytest

from cleaner.jobs.connection import connect
from cleaner.jobs.database import advisory_key, count_database, stale_query_index, transaction
from cleaner.jobs.force_clean import FORCE_CLEAN_REASON
from cleaner.state import State
from tests.fixtures.postgres import JobsDatabase
from tests.integration.recording import RecordingReaper

pytestmark = pytest.mark.integration

RUNNING = 180  # stale_after.running of the defaults (3m)
QUEUED = 120  # stale_after.queued (2m)


class Clock:
    """Wall time plus an offset a test can advance (to skip a reconnect backoff)."""

    def __init__(self) -> None:
        import time

        self._time = time.time
        self.offset = 0.0

    def __call__(self) -> float:
        return self._time() + self.offset


def make_reaper(
    jobs_db: JobsDatabase, jobs: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[RecordingReaper, State]:
    state = State()
    config = jobs_db.config(jobs)
    reaper = RecordingReaper(config.jobs, state, interval=5.0, **kwargs)
    return reaper, state


MIXED = [
    ("run-stale", "running", RUNNING + 60),
    ("run-fresh", "running", 30),
    ("run-edge", "running", RUNNING - 20),
    ("queue-stale", "queued", QUEUED + 60),
    ("queue-fresh", "queued", 10),
    ("done-old", "done", 30 * 86400),
    ("done-new", "done", 5),
    ("error-old", "error", 86400),
    ("cancelled-old", "cancelled", 86400),
    ("run-no-timestamp", "running", None),
]


def test_only_stale_active_rows_change_and_to_exactly_error_status(
    jobs_db: JobsDatabase,
) -> None:
    jobs_db.insert_many(MIXED)
    before = jobs_db.rows()
    reaper, state = make_reaper(jobs_db, {"database": {"error_message_column": "error_message"}})
    try:
        report = reaper.cycle()
    finally:
        reaper.close()
    after = jobs_db.rows()
    changed = {job_id for job_id in after if after[job_id] != before[job_id]}
    assert changed == {"run-stale", "queue-stale"}
    for job_id in changed:
        assert after[job_id]["status"] == "error"
        assert "stale" in after[job_id]["error_message"]
        # Only status and the reason change; the timestamps stay as the API left them.
        for column in ("created_at", "started_at", "updated_at"):
            assert after[job_id][column] == before[job_id][column]
    assert report.database_reaped == {"running": 1, "queued": 1}
    assert report.database_locked is True
    assert report.errors.messages == []
    assert state.jobs_reaped == {"database": {"running": 1, "queued": 1}}
    assert state.database_up is True
    assert state.jobs_active == 4  # run-fresh, run-edge, queue-fresh, run-no-timestamp


def test_without_error_message_column_only_status_changes(jobs_db: JobsDatabase) -> None:
    jobs_db.insert_many([("a", "running", RUNNING + 1000)])
    reaper, _ = make_reaper(jobs_db, {"database": {"error_status": "failed"}})
    try:
        reaper.cycle()
    finally:
        reaper.close()
    row = jobs_db.rows()["a"]
    assert row["status"] == "failed"
    assert row["error_message"] is None


def test_a_running_job_with_a_fresh_heartbeat_is_spared(jobs_db: JobsDatabase) -> None:
    # Started two hours ago, heartbeat ten seconds ago: alive.
    jobs_db.insert("long-alive", "running", 10, started_age=7200)
    jobs_db.insert("long-dead", "running", 7000, started_age=7200)
    reaper, _ = make_reaper(jobs_db)
    try:
        reaper.cycle()
        reaper.cycle()
    finally:
        reaper.close()
    assert jobs_db.statuses() == {"long-alive": "running", "long-dead": "error"}


def test_many_stale_rows_are_reaped_in_bounded_batches(jobs_db: JobsDatabase) -> None:
    jobs_db.insert_many([(f"s{i}", "running", RUNNING + 100 + i) for i in range(250)])
    jobs_db.insert_many([(f"f{i}", "running", 5) for i in range(30)])
    reaper, state = make_reaper(jobs_db, {"database": {"batch_size": 7}})
    try:
        report = reaper.cycle()
    finally:
        reaper.close()
    statuses = jobs_db.statuses()
    assert sum(1 for s in statuses.values() if s == "error") == 250
    assert sum(1 for s in statuses.values() if s == "running") == 30
    assert report.database_reaped == {"running": 250}
    assert state.jobs_reaped["database"] == {"running": 250}


def test_schema_qualified_table_and_odd_but_valid_identifiers(jobs_db: JobsDatabase) -> None:
    # Mixed case and reserved words are only usable when quoted: proves psycopg2.sql quoting.
    jobs_db.execute('CREATE SCHEMA "App"')
    jobs_db.execute(
        'CREATE TABLE "App"."Jobs" ("user" text PRIMARY KEY, "Order" text, "select" timestamptz)'
    )
    jobs_db.execute('GRANT USAGE ON SCHEMA "App" TO limpeza_test')
    jobs_db.execute('GRANT SELECT, UPDATE ON "App"."Jobs" TO limpeza_test')
    jobs_db.execute(
        "INSERT INTO \"App\".\"Jobs\" VALUES ('x', 'running', now() - interval '1 hour'), "
        "('y', 'running', now())"
    )
    reaper, state = make_reaper(
        jobs_db,
        {
            "database": {
                "table": "App.Jobs",
                "id_column": "user",
                "status_column": "Order",
                "timestamp_column": "select",
            }
        },
    )
    try:
        reaper.cycle()
    finally:
        reaper.close()
    rows = jobs_db.execute('SELECT "user", "Order" FROM "App"."Jobs" ORDER BY 1')
    assert rows == [("x", "error"), ("y", "running")]
    assert state.jobs_reaped == {"database": {"running": 1}}


def test_a_cleaner_without_the_advisory_lock_skips_the_database_step(
    jobs_db: JobsDatabase,
) -> None:
    jobs_db.insert("a", "running", RUNNING + 100)
    reaper, _ = make_reaper(jobs_db)
    config = jobs_db.config()
    assert config.jobs.database is not None
    holder = connect(config.jobs.database, application_name="other-host")
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (advisory_key(config.jobs.database),))
        skipped = reaper.cycle()
        assert skipped.database_locked is False
        assert jobs_db.statuses() == {"a": "running"}
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (advisory_key(config.jobs.database),))
        reaped = reaper.cycle()
        assert reaped.database_locked is True
        assert jobs_db.statuses() == {"a": "error"}
    finally:
        holder.close()
        reaper.close()


def test_two_cleaners_at_once_reap_every_stale_job_exactly_once(jobs_db: JobsDatabase) -> None:
    # Every status change is recorded by a trigger, so a job reaped twice would show.
    jobs_db.execute("CREATE TABLE reaped (id text NOT NULL)")
    jobs_db.execute("GRANT INSERT ON reaped TO limpeza_test")
    jobs_db.execute(
        "CREATE FUNCTION note_reaped() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN INSERT INTO reaped VALUES (NEW.id); RETURN NEW; END $$"
    )
    jobs_db.execute(
        "CREATE TRIGGER note_reaped AFTER UPDATE OF status ON jobs "
        "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
        "EXECUTE FUNCTION note_reaped()"
    )
    rounds, per_round = 40, 25
    jobs_db.insert_many([(f"fresh{i}", "running", 1) for i in range(20)])
    reapers = [make_reaper(jobs_db, {"database": {"batch_size": 4}}) for _ in range(2)]
    errors: list[str] = []
    barrier = threading.Barrier(3)

    def run(reaper: RecordingReaper) -> None:
        for _ in range(rounds):
            barrier.wait(timeout=60)
            report = reaper.cycle()
            errors.extend(report.errors.messages)
            barrier.wait(timeout=60)

    threads = [threading.Thread(target=run, args=(r,)) for r, _ in reapers]
    for thread in threads:
        thread.start()
    try:
        for n in range(rounds):
            jobs_db.insert_many(
                [
                    (f"r{n}-{i}", "running" if i % 2 else "queued", RUNNING + 10 + i)
                    for i in range(per_round)
                ]
            )
            barrier.wait(timeout=60)  # both cycle now, at the same time
            barrier.wait(timeout=60)
    finally:
        for thread in threads:
            thread.join(timeout=120)
        for reaper, _ in reapers:
            reaper.close()
    # A last cycle catches rows inserted while both skipped on the advisory lock.
    last, last_state = make_reaper(jobs_db)
    try:
        last.cycle()
    finally:
        last.close()
    total_stale = rounds * per_round
    reaped_ids = [row[0] for row in jobs_db.execute("SELECT id FROM reaped")]
    assert len(reaped_ids) == total_stale
    assert len(set(reaped_ids)) == total_stale  # none reaped twice
    counted = sum(
        n
        for _, state in [*reapers, (last, last_state)]
        for n in state.jobs_reaped.get("database", {}).values()
    )
    assert counted == total_stale  # the counts add up
    statuses = jobs_db.statuses()
    assert [s for j, s in statuses.items() if j.startswith("fresh")] == ["running"] * 20
    assert all(s == "error" for j, s in statuses.items() if j.startswith("r"))
    assert errors == []


def test_database_stopped_and_restarted_under_a_reaper(
    jobs_db: JobsDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cleaner")
    clock = Clock()
    jobs_db.insert("before", "running", RUNNING + 100)
    jobs_db.insert("during", "queued", QUEUED + 100)
    reaper, state = make_reaper(jobs_db, clock=clock)
    try:
        first = reaper.cycle()
        assert first.database_reaped == {"running": 1, "queued": 1}
        jobs_db.insert("after", "running", RUNNING + 100)
        jobs_db.server.stop()
        try:
            for _ in range(3):
                report = reaper.cycle()  # never raises
                assert report.errors.messages
                clock.offset += 10
            assert state.database_up is False
            assert state.errors["database"] >= 1
        finally:
            jobs_db.server.start()
        clock.offset += 10
        report = reaper.cycle()
        assert report.database_reaped == {"running": 1}
        assert state.database_up is True
    finally:
        reaper.close()
    assert jobs_db.statuses() == {"before": "error", "during": "error", "after": "error"}
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("database down" in r.getMessage() for r in warnings) == 1
    assert sum("database back" in r.getMessage() for r in caplog.records) == 1
    assert state.jobs_reaped == {"database": {"running": 2, "queued": 1}}


def test_a_restart_between_cycles_costs_no_cycle(jobs_db: JobsDatabase) -> None:
    reaper, state = make_reaper(jobs_db)
    try:
        reaper.cycle()
        jobs_db.server.stop()
        jobs_db.server.start()
        jobs_db.insert("a", "running", RUNNING + 100)
        report = reaper.cycle()
    finally:
        reaper.close()
    assert report.database_reaped == {"running": 1}
    assert report.errors.messages == []
    assert state.errors.get("database", 0) == 0


def test_database_down_at_start_backs_off_and_cache_is_still_reaped(
    jobs_db: JobsDatabase, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import time

    cache = tmp_path / "jobs.json"
    cache.write_text(json.dumps({"old": {"status": "running", "updated_at": time.time() - 999}}))
    clock = Clock()
    config = jobs_db.config({"cache_file": str(cache)})
    assert config.jobs.database is not None
    # Nothing listens on this port: the database is down from the start.
    from dataclasses import replace

    from tests.fixtures.processes import free_port

    down = replace(
        config.jobs,
        database=replace(
            config.jobs.database,
            dsn=jobs_db.dsn.replace(str(jobs_db.server.port), str(free_port())),
        ),
    )
    state = State()
    reaper = RecordingReaper(down, state, clock=clock, interval=30.0)
    caplog.set_level(logging.INFO, logger="cleaner")
    try:
        first = reaper.cycle()
        second = reaper.cycle()  # within the backoff: no new attempt, no new error
    finally:
        reaper.close()
    assert first.cache_reaped == {"running": 1}
    assert json.loads(cache.read_text()) == {}
    assert state.database_up is False
    assert state.errors["database"] == 1
    assert "database: down" in second.errors.messages
    assert sum("database down" in r.getMessage() for r in caplog.records) == 1


def test_the_dsn_password_never_reaches_a_log_line_or_a_report(
    jobs_db: JobsDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    from dataclasses import replace

    caplog.set_level(logging.DEBUG)
    secret = "Wr0ng-Secret-Pa55"
    config = jobs_db.config({"health_url": None})
    assert config.jobs.database is not None
    wrong = jobs_db.dsn.replace(jobs_db.password, secret)
    bad_option = f"{jobs_db.dsn}?nonsense_option=1"
    texts: list[str] = []
    for dsn in (wrong, bad_option, f"host=127.0.0.1 password={secret} port=notaport"):
        jobs = replace(config.jobs, database=replace(config.jobs.database, dsn=dsn))
        reaper = RecordingReaper(jobs, State(), interval=1.0)
        try:
            report = reaper.cycle()
            force = reaper.force_clean(dry_run=True)
            status = reaper.status()
        finally:
            reaper.close()
        assert report.errors.messages
        texts += [*report.errors.messages, *force.errors.messages, repr(status)]
    texts.append(caplog.text)
    assert "password authentication failed" in caplog.text  # the failure is explained
    for text in texts:
        assert secret not in text
        assert jobs_db.password not in text


def test_force_clean_dry_run_changes_nothing_and_the_real_run_ends_every_active_job(
    jobs_db: JobsDatabase,
) -> None:
    jobs_db.insert_many(
        [
            ("r1", "running", 5),
            ("r2", "running", RUNNING + 100),
            ("q1", "queued", 1),
            ("q2", "queued", None),
            ("d1", "done", 5),
            ("e1", "error", 5),
        ]
    )
    before = jobs_db.rows()
    reaper, state = make_reaper(jobs_db, {"database": {"error_message_column": "error_message"}})
    try:
        dry = reaper.force_clean(dry_run=True)
        assert jobs_db.rows() == before
        assert dry.database == {"running": 2, "queued": 2}
        assert state.force_cleans == 0
        assert state.jobs_reaped == {}
        real = reaper.force_clean(dry_run=False)
    finally:
        reaper.close()
    assert real.database == {"running": 2, "queued": 2}
    assert real.errors.messages == []
    after = jobs_db.rows()
    for job_id in ("r1", "r2", "q1", "q2"):
        assert after[job_id]["status"] == "error"
        assert after[job_id]["error_message"] == FORCE_CLEAN_REASON
    assert after["d1"] == before["d1"]
    assert after["e1"] == before["e1"]
    assert state.force_cleans == 1
    assert state.jobs_reaped == {"database": {"running": 2, "queued": 2}}


def test_force_clean_with_min_age_touches_only_older_jobs(jobs_db: JobsDatabase) -> None:
    jobs_db.insert_many([("young", "running", 5), ("old", "running", 90), ("none", "queued", None)])
    reaper, _ = make_reaper(jobs_db)
    try:
        report = reaper.force_clean(dry_run=False, min_age=60)
    finally:
        reaper.close()
    assert report.database == {"running": 1}
    assert jobs_db.statuses() == {"young": "running", "old": "error", "none": "queued"}


@pytest.mark.parametrize(("active", "fires"), [(6, True), (5, False)])
def test_automatic_force_clean_needs_the_count_over_threshold_on_consecutive_cycles(
    jobs_db: JobsDatabase, active: int, fires: bool
) -> None:
    jobs_db.insert_many([(f"j{i}", "running", 5) for i in range(active)])
    reaper, state = make_reaper(
        jobs_db, {"force_clean": {"auto": True, "threshold": 5, "confirm_cycles": 2}}
    )
    try:
        first = reaper.cycle()
        assert first.force_clean is None
        assert set(jobs_db.statuses().values()) == {"running"}
        second = reaper.cycle()
    finally:
        reaper.close()
    if fires:
        assert second.force_clean is not None
        assert second.force_clean.database == {"running": active}
        assert set(jobs_db.statuses().values()) == {"error"}
        assert state.force_cleans == 1
    else:
        assert second.force_clean is None
        assert set(jobs_db.statuses().values()) == {"running"}
        assert state.force_cleans == 0


def test_automatic_force_clean_is_off_by_default(jobs_db: JobsDatabase) -> None:
    jobs_db.insert_many([(f"j{i}", "running", 5) for i in range(20)])
    reaper, state = make_reaper(jobs_db)
    try:
        for _ in range(4):
            assert reaper.cycle().force_clean is None
    finally:
        reaper.close()
    assert set(jobs_db.statuses().values()) == {"running"}
    assert state.force_cleans == 0


def test_count_database_is_one_query_on_the_servers_clock(jobs_db: JobsDatabase) -> None:
    jobs_db.insert_many(MIXED)
    config = jobs_db.config()
    assert config.jobs.database is not None
    conn = connect(config.jobs.database, application_name="test")
    try:
        counts = count_database(conn, config.jobs.database, config.jobs.stale_after)
    finally:
        conn.close()
    assert counts.by_status == {"queued": 2, "running": 4}  # finished statuses are not read
    assert counts.stale == {"queued": 1, "running": 1}
    assert counts.active == 6


def test_connect_sets_nothing_for_the_session_each_transaction_sets_its_limits(
    jobs_db: JobsDatabase,
) -> None:
    config = jobs_db.config({"database": {"lock_timeout": "1500ms", "statement_timeout": "4s"}})
    db = config.jobs.database
    assert db is not None
    conn = connect(db, application_name="limpeza-test")
    settings = (
        "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'), "
        "current_setting('enable_seqscan'), current_setting('application_name')"
    )
    try:
        with conn.cursor() as cur:
            cur.execute(settings)
            assert cur.fetchone() == ("0", "0", "on", "limpeza-test")
        with transaction(conn, db, commit=False, settings={"enable_seqscan": "off"}) as cur:
            cur.execute(settings)
            assert cur.fetchone() == ("1500ms", "4s", "off", "limpeza-test")
        count_database(conn, db, config.jobs.stale_after)
        stale_query_index(conn, db, config.jobs.stale_after)
        with conn.cursor() as cur:
            cur.execute(settings)
            assert cur.fetchone() == ("0", "0", "on", "limpeza-test")
    finally:
        conn.close()


def test_a_row_the_api_holds_locked_is_skipped_not_waited_for(jobs_db: JobsDatabase) -> None:
    jobs_db.insert_many([("held", "running", RUNNING + 100), ("free", "running", RUNNING + 100)])
    api = psycopg2.connect(jobs_db.server.dsn(jobs_db.name))
    try:
        with api.cursor() as cur:
            cur.execute("SELECT id FROM jobs WHERE id = 'held' FOR UPDATE")
        reaper, _ = make_reaper(jobs_db)
        try:
            report = reaper.cycle()
        finally:
            reaper.close()
        assert report.errors.messages == []
        assert report.database_reaped == {"running": 1}
    finally:
        api.rollback()
        api.close()
    assert jobs_db.statuses() == {"held": "running", "free": "error"}


def test_status_reports_counts_and_whether_an_index_serves_the_stale_query(
    jobs_db: JobsDatabase,
) -> None:
    jobs_db.insert_many(MIXED)
    reaper, _ = make_reaper(jobs_db)
    try:
        without = reaper.status()["database"]
        jobs_db.execute("CREATE INDEX jobs_status_updated_at ON jobs (status, updated_at)")
        with_index = reaper.status()["database"]
    finally:
        reaper.close()
    assert without["up"] is True
    assert without["jobs"] == {"queued": 2, "running": 4}
    assert without["active"] == 6
    assert without["stale"] == {"queued": 1, "running": 1}
    assert without["index"]["usable"] is False
    assert with_index["index"]["usable"] is True
    assert with_index["index"]["indexes"] == ["jobs_status_updated_at"]
    assert with_index["index"]["covers_timestamp"] is True


def test_stats_every_tenth_cycle(jobs_db: JobsDatabase, caplog: pytest.LogCaptureFixture) -> None:
    jobs_db.insert_many(
        [("d1", "done", 60), ("d2", "done", 3600), ("e1", "error", 60), ("old", "done", 2 * 86400)]
    )
    caplog.set_level(logging.INFO, logger="cleaner")
    reaper, _ = make_reaper(jobs_db)
    try:
        reports = [reaper.cycle() for _ in range(10)]
    finally:
        reaper.close()
    assert [r.stats for r in reports[:9]] == [None] * 9
    assert reports[9].stats == {"done": 2, "error": 1}
    assert "jobs in the last 24h by status: {'done': 2, 'error': 1}" in caplog.text


def test_nothing_configured_does_nothing_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cleaner.config import build

    caplog.set_level(logging.INFO, logger="cleaner")
    config = build({}, env={})
    state = State()
    reaper = RecordingReaper(config.jobs, state)
    try:
        reports = [reaper.cycle() for _ in range(3)]
    finally:
        reaper.close()
    assert all(r.errors.messages == [] and r.jobs_active is None for r in reports)
    assert caplog.text.count("nothing to reap") == 1
    assert state.jobs_reaped == {} and state.errors == {}
