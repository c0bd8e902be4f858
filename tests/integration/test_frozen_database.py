"""A frozen database or pooler (SIGSTOP) never stalls the cleaner.

A stopped process's kernel still completes TCP handshakes and acknowledges data, so neither
keepalives nor ``tcp_user_timeout`` notice it, and the server's own ``statement_timeout``
cannot fire: only the client-side deadlines can. Every test thaws what it froze in a
``finally``, so the fixtures can stop the servers.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cleaner.jobs.connection import (
    CANCEL_GRACE,
    DatabaseDownError,
    KeptConnection,
    statement_deadline,
)
from cleaner.state import read_state
from devtools.limpeza import CleanerProcess, LimpezaProcesses
from devtools.postgres import JobsDatabase, PostgresServer
from devtools.postgres import fresh_jobs_database as _fresh
from devtools.process import frozen
from tests.fixtures.pgbouncer import PgBouncer
from tests.fixtures.postgres import own_cluster

STATEMENT_TIMEOUT = 1.0
CONNECT_TIMEOUT = 2.0
#: What a frozen server may cost one call at most, with a generous margin for a busy host.
CALL_BOUND = statement_deadline(STATEMENT_TIMEOUT) + CANCEL_GRACE + 5.0
DATABASE = {"statement_timeout": f"{STATEMENT_TIMEOUT:g}s", "connect_timeout": "2s"}


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresServer]:
    """A cluster of this module's own: freezing it cannot touch another test's database."""
    with own_cluster("limpeza-frozen-pg-") as server:
        yield server


@pytest.fixture
def own_db(own_server: PostgresServer) -> Iterator[JobsDatabase]:
    with _fresh(own_server) as database:
        yield database


def _raises_down_within(kept: KeptConnection, bound: float) -> DatabaseDownError:
    start = time.monotonic()
    with pytest.raises(DatabaseDownError) as caught:
        kept.run(lambda conn: conn.cursor().execute("SELECT 1"))
    assert time.monotonic() - start < bound
    return caught.value


def test_kept_connection_returns_within_the_deadline_on_a_frozen_server(
    own_server: PostgresServer, own_db: JobsDatabase
) -> None:
    db = own_db.config({"database": DATABASE}).jobs.database
    assert db is not None
    kept = KeptConnection(db, application_name="limpeza-test", max_backoff=0.0)
    try:
        kept.run(lambda conn: conn.cursor().execute("SELECT 1"))  # a kept, open connection
        with frozen(own_server.pid()):
            # The statement on the kept connection: cancelled, then cut off.
            error = _raises_down_within(kept, CALL_BOUND)
            assert error.attempted and "no answer within" in str(error)
            assert kept.up is False
            # A new connection: the server never answers the startup packet.
            _raises_down_within(kept, CONNECT_TIMEOUT + 5.0)
        deadline = time.monotonic() + 60
        while True:  # thawed: the next run connects again
            try:
                kept.run(lambda conn: conn.cursor().execute("SELECT 1"))
                break
            except DatabaseDownError:
                assert time.monotonic() < deadline, "no reconnection after the thaw"
                time.sleep(0.2)
        assert kept.up is True
    finally:
        kept.close()


# -- the daemon as a real process ----------------------------------------------------------


def _daemon_config(procs: LimpezaProcesses, jobs_db: JobsDatabase) -> Path:
    return procs.write_config(
        jobs_db,
        interval="2s",
        extra={
            "files": {
                "rules": [{"name": "sessions", "pattern": "session_*.json", "max_age": "3s"}]
            },
            "jobs": {"database": {"table": jobs_db.table, **DATABASE}},
        },
    )


def _last_success(state_file: Path) -> float:
    value = read_state(state_file).last_success
    assert value is not None
    return value


def _wait(what: str, check: Any, timeout: float, cleaner: CleanerProcess) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}:\n{cleaner.log_tail()}"
        cleaner.check_running()
        time.sleep(0.2)


def _freeze_scenario(
    procs: LimpezaProcesses, jobs_db: JobsDatabase, config: Path, freeze_pid: Any
) -> None:
    """Files expire and are swept while the database path is frozen; after the thaw a stale
    job is reaped; frozen again, SIGTERM stops the daemon within 5 s, exit 0."""
    uploads = procs.base / "uploads"
    state_file = procs.base / "state" / "state.json"
    cleaner = procs.start_cleaner(config)
    with frozen(freeze_pid()):
        time.sleep(3)  # a jobs cycle is now stuck on the frozen server
        before = _last_success(state_file)
        for n in range(3):
            (uploads / f"session_{n}.json").write_text("{}")
        # They expire 3 s from now: swept within a few 2 s intervals, never waiting on the
        # database (the old daemon waited on its query until the thaw).
        _wait("files not swept while frozen", lambda: not any(uploads.iterdir()), 30, cleaner)
        assert _last_success(state_file) > before
        _wait(
            "the database not reported down",
            lambda: read_state(state_file).database_up is False,
            30,
            cleaner,
        )
    jobs_db.insert("stale-1", "running", age=3600)
    _wait(
        "no reaping after the thaw",
        lambda: jobs_db.statuses().get("stale-1") == "error",
        60,
        cleaner,
    )
    with frozen(freeze_pid()):
        time.sleep(3)
        start = time.monotonic()
        cleaner.process.send_signal(signal.SIGTERM)
        try:
            code = cleaner.process.wait(timeout=5)
        except Exception:
            pytest.fail(f"no exit within 5 s of SIGTERM:\n{cleaner.log_tail()}")
        assert code == 0, cleaner.log_tail()
        assert time.monotonic() - start < 5
    assert read_state(state_file).last_success is not None


def test_daemon_keeps_sweeping_while_postgres_is_frozen(
    own_server: PostgresServer, own_db: JobsDatabase, limpeza_processes: LimpezaProcesses
) -> None:
    config = _daemon_config(limpeza_processes, own_db)
    _freeze_scenario(limpeza_processes, own_db, config, lambda: own_server.pid())


def test_daemon_keeps_sweeping_while_pgbouncer_is_frozen(
    jobs_db: JobsDatabase, pgbouncer: PgBouncer, limpeza_processes: LimpezaProcesses
) -> None:
    config = _daemon_config(limpeza_processes, jobs_db)
    limpeza_processes.env["LIMPEZA_DATABASE_URL"] = pgbouncer.dsn(jobs_db.name)
    _freeze_scenario(limpeza_processes, jobs_db, config, lambda: pgbouncer.process.pid)
