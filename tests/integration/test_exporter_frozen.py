"""A frozen database or pooler (SIGSTOP) never holds a scrape past ``database_timeout``.

The real exporter counts jobs in a real PostgreSQL, directly or through PgBouncer in
transaction mode; the server or the pooler is then stopped with SIGSTOP, so connections
are accepted and never answered. Every scrape, one at a time and two at once, must still
answer within ``exporter.database_timeout`` and a small margin, with
``limpeza_database_up 0`` and the other metrics; after the thaw the count comes back.
``connect_timeout`` is longer than ``database_timeout`` on purpose: a scrape must not
wait for it either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from devtools.limpeza import ExporterProcess, LimpezaProcesses
from devtools.pgbouncer import PgBouncer
from devtools.postgres import JobsDatabase, PostgresServer
from devtools.postgres import fresh_jobs_database as _fresh
from devtools.process import frozen
from tests.fixtures.exposition import sample
from tests.fixtures.postgres import own_cluster

pytestmark = pytest.mark.integration

DATABASE_TIMEOUT = 2.0
#: What a scrape may take beyond database_timeout: the rest of the scrape, and a busy host.
MARGIN = 1.5


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresServer]:
    """A cluster of this module's own: freezing it cannot touch another test's database."""
    with own_cluster("limpeza-exporter-frozen-pg-") as server:
        yield server


@pytest.fixture
def own_db(own_server: PostgresServer) -> Iterator[JobsDatabase]:
    with _fresh(own_server) as database:
        yield database


def timed_scrape(exporter: ExporterProcess) -> tuple[float, str]:
    start = time.monotonic()
    response = exporter.get(timeout=30)
    elapsed = time.monotonic() - start
    assert response.status_code == 200, response.text
    return elapsed, response.text


def assert_quick_and_down(elapsed: float, text: str, exporter: ExporterProcess) -> None:
    assert elapsed < DATABASE_TIMEOUT + MARGIN, (
        f"a scrape took {elapsed:.1f}s on a frozen database:\n{exporter.log_tail()}"
    )
    assert sample(text, "limpeza_database_up") == 0
    assert sample(text, "limpeza_state_up") is not None  # everything else still comes


def scenario(
    procs: LimpezaProcesses, db: JobsDatabase, dsn: str, freeze_pid: Callable[[], int]
) -> None:
    db.insert_many([("stale", "running", 3600), ("fresh", "queued", 5)])
    config = procs.write_config(
        db,
        extra={
            "exporter": {"database_timeout": f"{DATABASE_TIMEOUT:g}s"},
            "jobs": {"database": {"table": db.table, "connect_timeout": "5s"}},
        },
    )
    procs.env["LIMPEZA_DATABASE_URL"] = dsn
    exporter = procs.start_exporter(config)
    _, text = timed_scrape(exporter)
    assert sample(text, "limpeza_database_up") == 1, text
    assert sample(text, "limpeza_jobs_active") == 2, text
    with frozen(freeze_pid()):
        # The kept connection's statement, then new connections the server never answers.
        for _ in range(3):
            assert_quick_and_down(*timed_scrape(exporter), exporter)
        # Two scrapes at once (two Prometheus servers): neither waits for the other.
        results: list[tuple[float, str]] = []
        threads = [
            threading.Thread(target=lambda: results.append(timed_scrape(exporter)))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == 2, exporter.log_tail()
        for elapsed, text in results:
            assert_quick_and_down(elapsed, text, exporter)
    deadline = time.monotonic() + 60
    while True:  # thawed: a later scrape counts again
        _, text = timed_scrape(exporter)
        if sample(text, "limpeza_database_up") == 1:
            break
        assert time.monotonic() < deadline, f"no count after the thaw:\n{exporter.log_tail()}"
        time.sleep(0.5)
    assert sample(text, "limpeza_jobs_active") == 2, text
    assert db.password not in exporter.log()


def test_a_frozen_postgres_never_holds_a_scrape(
    own_server: PostgresServer, own_db: JobsDatabase, limpeza_processes: LimpezaProcesses
) -> None:
    scenario(limpeza_processes, own_db, own_db.dsn, own_server.pid)


def test_a_frozen_pgbouncer_never_holds_a_scrape(
    jobs_db: JobsDatabase, pgbouncer: PgBouncer, limpeza_processes: LimpezaProcesses
) -> None:
    scenario(limpeza_processes, jobs_db, pgbouncer.dsn(jobs_db.name), lambda: pgbouncer.process.pid)
