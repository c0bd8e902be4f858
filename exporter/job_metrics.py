"""The jobs now: counted at scrape time in the jobs table, else in the JSON job cache.

Counting is the cleaner's own code (``cleaner.jobs``): the one definition of stale, over
the same kept connection class the reaper uses. A database that is down or slow gives
``limpeza_database_up 0`` and no job counts; so does a cache that cannot be read
(``limpeza_cache_up 0``). Each fault is logged once when it starts and once when it ends.
Statuses outside the configured ones are counted as ``other`` (``exporter.statuses``).

Jobs counted in the table describe the database every host shares, not this host: their
series carry ``table`` (``jobs.database.name``, by default ``host:port/dbname/table``, never
a credential), the same on every exporter of that table, so the alert rules and the
dashboard take one value per table however many exporters count it. Jobs counted in a
host's own JSON cache carry no ``table``: they are that instance's.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from psycopg2 import sql

from cleaner.config import Config, DatabaseConfig
from cleaner.jobs.cache import CacheError, count_cache, read_cache
from cleaner.jobs.connection import Connection, DatabaseDownError, DatabaseError, KeptConnection
from cleaner.jobs.database import count_database, timestamp_expression, transaction
from cleaner.jobs.staleness import JobCounts, record_timestamp
from exporter.faults import Faults
from exporter.statuses import fold, known_statuses

APPLICATION_NAME = "limpeza-exporter"

Clock = Callable[[], float]


@dataclass(frozen=True)
class JobsNow:
    """What one scrape counted: jobs per status, stale ones, the oldest active job's age."""

    counts: JobCounts
    #: Active status -> seconds since the oldest job in it last showed life (absent: none).
    oldest: Mapping[str, float] = field(default_factory=dict)


def oldest_ages(
    conn: Connection, db: DatabaseConfig, *, statement_timeout: float | None = None
) -> dict[str, float]:
    """Per active status, the age of its oldest job by the server's clock, in one transaction."""
    query = sql.SQL(
        "SELECT {status}::text, extract(epoch FROM now() - min({ts}))::float8 "
        "FROM {table} WHERE {status}::text = ANY(%(active)s) GROUP BY 1"
    ).format(
        status=sql.Identifier(db.status_column),
        ts=timestamp_expression(db),
        table=sql.Identifier(*db.table_parts),
    )
    with transaction(conn, db, statement_timeout=statement_timeout, commit=False) as cur:
        cur.execute(query, {"active": list(db.active_statuses)})
        rows = cur.fetchall()
    return {
        str(status): max(0.0, float(age))
        for status, age in rows
        if age is not None and math.isfinite(float(age))
    }


def cache_oldest_ages(
    records: Mapping[str, Mapping[str, object]], config: Config, now: float
) -> dict[str, float]:
    """Per active status, the age of its oldest cached job with a readable timestamp."""
    oldest: dict[str, float] = {}
    for record in records.values():
        status = str(record.get("status"))
        if status not in config.jobs.stale_after:
            continue
        moment = record_timestamp(record, config.jobs.cache_zone)
        if moment is not None:
            oldest[status] = max(oldest.get(status, 0.0), max(0.0, now - moment))
    return oldest


class DatabaseProbe:
    """Counts jobs in PostgreSQL over one connection kept across scrapes.

    A scrape waits for the database ``timeout`` seconds at most, its turn included: the
    count runs in a thread of its own, and a scrape that has no answer in time reports the
    database down while the count ends by itself (the connection's client-side deadlines
    bound it; a frozen server or pooler costs a statement ``timeout`` plus two seconds, a
    new connection ``connect_timeout``). Until it has, the next scrapes wait for their
    turn only what is left of their own ``timeout``. After a failure the next scrape
    connects again (no backoff: a scrape is the exporter's only chance to look).
    """

    def __init__(self, db: DatabaseConfig, stale_after: dict[str, float], timeout: float) -> None:
        self.db = db
        self.stale_after = stale_after
        self.timeout = timeout
        self._kept = KeptConnection(
            db,
            application_name=APPLICATION_NAME,
            statement_timeout=timeout,
            max_backoff=0.0,
            log_changes=False,  # the collector logs each source's faults once per change
        )
        self._lock = threading.Lock()

    def count(self) -> tuple[JobsNow | None, str | None]:
        """(jobs, None) or (None, why the database could not be counted), within ``timeout``."""
        deadline = time.monotonic() + self.timeout
        if not self._lock.acquire(timeout=self.timeout):
            return None, "an earlier count is still waiting for the database"
        outcome: list[tuple[JobsNow | None, str | None]] = []
        worker = threading.Thread(
            target=self._count_then_release,
            args=(outcome,),
            name="limpeza-exporter-count",
            daemon=True,
        )
        try:
            worker.start()
        except BaseException:
            self._lock.release()
            raise
        worker.join(max(0.0, deadline - time.monotonic()))
        if not outcome:
            return None, f"no answer within {self.timeout:g}s"
        return outcome[0]

    def _count_then_release(self, outcome: list[tuple[JobsNow | None, str | None]]) -> None:
        """The count on the kept connection, in the worker; the lock is held until it ends."""
        try:
            outcome.append(self._count())
        finally:
            self._lock.release()

    def _count(self) -> tuple[JobsNow | None, str | None]:
        try:
            counts = self._kept.run(
                lambda c: JobsNow(
                    count_database(c, self.db, self.stale_after, statement_timeout=self.timeout),
                    oldest_ages(c, self.db, statement_timeout=self.timeout),
                )
            )
        except DatabaseError as exc:
            # The database answered but the count failed (a missing table, a timeout): the
            # connection may be in any state, so the next scrape starts on a fresh one.
            self._kept.close()
            return None, str(exc)
        except DatabaseDownError as exc:
            return None, str(exc)
        return counts, None

    def close(self) -> None:
        with self._lock:
            self._kept.close()


def probe_for(config: Config) -> DatabaseProbe | None:
    """The probe of the configured jobs table, or None when jobs come from elsewhere."""
    db = config.jobs.database
    if db is None:
        return None
    return DatabaseProbe(db, dict(config.jobs.stale_after), config.exporter.database_timeout)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def job_metrics(
    config: Config, database: DatabaseProbe | None, faults: Faults, clock: Clock
) -> Iterator[Metric]:
    """The source's up gauge and, when it could be counted, the jobs per status."""
    jobs: JobsNow | None = None
    names: list[str] = []
    values: list[str] = []
    if database is not None:
        names, values = ["table"], [database.db.name]
        jobs, problem = database.count()
        faults.report("database", problem)
        up = GaugeMetricFamily(
            "limpeza_database_up",
            "1 when the job count query on the jobs table succeeded in this scrape.",
            labels=names,
        )
        up.add_metric(values, 1 if jobs is not None else 0)
        yield up
    elif config.jobs.cache_file is not None:
        try:
            records = read_cache(config.jobs.cache_file, lock_wait=1.0)
            now = clock()
            jobs = JobsNow(
                count_cache(records, config.jobs.stale_after, now, zone=config.jobs.cache_zone),
                cache_oldest_ages(records, config, now),
            )
            faults.report(f"job cache {config.jobs.cache_file}", None)
        except CacheError as exc:
            faults.report(f"job cache {config.jobs.cache_file}", str(exc))
        yield _gauge(
            "limpeza_cache_up",
            "1 when the JSON job cache was read in this scrape (a missing file is empty).",
            1 if jobs is not None else 0,
        )
    if jobs is None:
        return
    counts = jobs.counts
    if database is not None:
        where = "the jobs table"
        per_status = "Jobs in each active status now, counted in the jobs table at scrape time."
    else:
        where = "the JSON job cache"
        per_status = "Jobs per status now, counted in the JSON job cache at scrape time."
    by_status = GaugeMetricFamily(
        "limpeza_jobs",
        per_status + " Statuses other than the configured ones are counted as other.",
        labels=[*names, "status"],
    )
    for status, number in sorted(fold(counts.by_status, known_statuses(config)).items()):
        by_status.add_metric([*values, status], number)
    yield by_status
    active = GaugeMetricFamily(
        "limpeza_jobs_active",
        f"Jobs in an active status (queued, running) now, counted in {where}.",
        labels=names,
    )
    active.add_metric(values, counts.active)
    yield active
    stale = GaugeMetricFamily(
        "limpeza_jobs_stale",
        f"Active jobs older than their jobs.stale_after threshold now, counted in {where}.",
        labels=[*names, "status"],
    )
    for status, number in sorted(counts.stale.items()):
        stale.add_metric([*values, status], number)
    yield stale
    oldest = GaugeMetricFamily(
        "limpeza_jobs_oldest_age_seconds",
        "Seconds since the oldest job in each active status last showed life (its "
        f"timestamp), in {where} now; 0 when the status has no job.",
        labels=[*names, "status"],
    )
    for status in sorted(counts.stale):
        oldest.add_metric([*values, status], jobs.oldest.get(status, 0.0))
    yield oldest
