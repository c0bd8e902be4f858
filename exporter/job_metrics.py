"""The jobs now: counted at scrape time in the jobs table, else in the JSON job cache.

Counting is the cleaner's own code (``cleaner.jobs``): the one definition of stale, over
the same kept connection class the reaper uses. A database that is down or slow gives
``limpeza_database_up 0`` and no job counts; so does a cache that cannot be read
(``limpeza_cache_up 0``). Each fault is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from cleaner.config import Config, DatabaseConfig
from cleaner.jobs.cache import CacheError, count_cache, read_cache
from cleaner.jobs.connection import DatabaseDownError, DatabaseError, KeptConnection
from cleaner.jobs.database import count_database
from cleaner.jobs.staleness import JobCounts
from exporter.faults import Faults

APPLICATION_NAME = "limpeza-exporter"

Clock = Callable[[], float]


class DatabaseProbe:
    """Counts jobs in PostgreSQL over one connection kept across scrapes.

    Scrapes that overlap take turns; one that cannot get its turn in time reports the
    database down rather than wait past the scrape timeout. After a failure the next
    scrape connects again (no backoff: a scrape is the exporter's only chance to look).
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

    def count(self) -> tuple[JobCounts | None, str | None]:
        """(counts, None) or (None, why the database could not be counted)."""
        if not self._lock.acquire(timeout=self.timeout + self.db.connect_timeout):
            return None, "another scrape is still waiting for the database"
        try:
            counts = self._kept.run(
                lambda c: count_database(
                    c, self.db, self.stale_after, statement_timeout=self.timeout
                )
            )
        except DatabaseError as exc:
            # The database answered but the count failed (a missing table, a timeout): the
            # connection may be in any state, so the next scrape starts on a fresh one.
            self._kept.close()
            return None, str(exc)
        except DatabaseDownError as exc:
            return None, str(exc)
        finally:
            self._lock.release()
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
    counts: JobCounts | None = None
    if database is not None:
        counts, problem = database.count()
        faults.report("database", problem)
        yield _gauge(
            "limpeza_database_up",
            "1 when the job count query on the jobs table succeeded in this scrape.",
            1 if counts is not None else 0,
        )
    elif config.jobs.cache_file is not None:
        try:
            records = read_cache(config.jobs.cache_file, lock_wait=1.0)
            counts = count_cache(
                records, config.jobs.stale_after, clock(), zone=config.jobs.cache_zone
            )
            faults.report(f"job cache {config.jobs.cache_file}", None)
        except CacheError as exc:
            faults.report(f"job cache {config.jobs.cache_file}", str(exc))
        yield _gauge(
            "limpeza_cache_up",
            "1 when the JSON job cache was read in this scrape (a missing file is empty).",
            1 if counts is not None else 0,
        )
    if counts is None:
        return
    if database is not None:
        where = "the jobs table"
        per_status = "Jobs in each active status now, counted in the jobs table at scrape time."
    else:
        where = "the JSON job cache"
        per_status = "Jobs per status now, counted in the JSON job cache at scrape time."
    by_status = GaugeMetricFamily("limpeza_jobs", per_status, labels=["status"])
    for status, number in sorted(counts.by_status.items()):
        by_status.add_metric([status], number)
    yield by_status
    yield _gauge(
        "limpeza_jobs_active",
        f"Jobs in an active status (queued, running) now, counted in {where}.",
        counts.active,
    )
    stale = GaugeMetricFamily(
        "limpeza_jobs_stale",
        f"Active jobs older than their jobs.stale_after threshold now, counted in {where}.",
        labels=["status"],
    )
    for status, number in sorted(counts.stale.items()):
        stale.add_metric([status], number)
    yield stale
