"""The job reaper's cycle: the cache, the database, the API's health, stats, force-clean.

Each cycle, after the file sweep: stale entries leave the JSON cache; stale rows get
``error_status`` in the database, in batches, by one cleaner at a time across all hosts;
the API's health endpoint is asked for its active count; every ``STATS_EVERY`` cycles the
jobs per status over the last 24 h are logged; with ``force_clean.auto`` the daemon ends
every active job when too many stay active. ``cycle()`` returns a ``CycleReport`` of what
it did and what failed; it changes no counters of anyone's (the daemon applies the report).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from cleaner.config import JobsConfig
from cleaner.health import HealthMonitor, HealthResult
from cleaner.jobs import cache
from cleaner.jobs.connection import Connection, KeptConnection, run_step
from cleaner.jobs.database import ReaperLockHeldError, count_database, end_jobs, stats_since
from cleaner.jobs.force_clean import JOB_SOURCES, AutoForceClean, ForceCleanReport, force_clean
from cleaner.jobs.staleness import JobCounts
from cleaner.report import format_duration, summary
from cleaner.state import StageErrors

log = logging.getLogger(__name__)

#: Statistics (jobs per status over the last 24 h) are logged every this many cycles.
STATS_EVERY = 10
STATS_WINDOW = 86400.0


@dataclass
class CycleReport:
    """What one cycle of the reaper did, for the daemon to record."""

    cache_reaped: dict[str, int] = field(default_factory=dict)
    database_reaped: dict[str, int] = field(default_factory=dict)
    #: False when another cleaner held the reaper lock, None when the step did not run.
    database_locked: bool | None = None
    #: Whether the database could be reached this cycle; None when it is not configured.
    database_up: bool | None = None
    api: HealthResult | None = None
    jobs_active: int | None = None
    stats: dict[str, int] | None = None
    force_clean: ForceCleanReport | None = None
    errors: StageErrors = field(default_factory=StageErrors)


class JobReaper:
    """One cleaner's job reaping: the cache, the database, the API's health, force-clean.

    ``cycle()`` never raises: every failure is logged and reported by stage (``cache``,
    ``database``, ``health``, ``jobs`` for a crash of the cycle itself). The database
    connection is kept between cycles (``KeptConnection``, backoff capped at ``interval``).
    """

    def __init__(
        self,
        config: JobsConfig,
        *,
        clock: Callable[[], float] = time.time,
        interval: float = 30.0,
        application_name: str = "limpeza-cleaner",
        health: HealthMonitor | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._database = (
            KeptConnection(
                config.database,
                application_name=application_name,
                max_backoff=interval,
                clock=clock,
            )
            if config.database is not None
            else None
        )
        self._cycles = 0
        self._auto = AutoForceClean(config.force_clean)
        self._cache_problem: str | None = None
        self._said_idle = False
        self.health = health
        if self.health is None and config.health_url:
            self.health = HealthMonitor(config.health_url, config.health_timeout, clock=clock)

    @property
    def has_work(self) -> bool:
        return self.config.database is not None or self.config.cache_file is not None

    def close(self) -> None:
        """Closes the database connection and the health session."""
        if self._database is not None:
            self._database.close()
        if self.health is not None:
            self.health.close()

    # ------------------------------------------------------------------ one cycle

    def cycle(self) -> CycleReport:
        """One daemon cycle: cache, database, API health, stats, automatic force-clean."""
        self._cycles += 1
        report = CycleReport()
        if not self.has_work and not self._said_idle:
            log.info("job reaper: no jobs.database and no jobs.cache_file; nothing to reap")
            self._said_idle = True
        try:
            self._cycle_steps(report)
        except Exception as exc:  # a bug must not stop the daemon
            log.exception("job reaper cycle failed")
            report.errors.add("jobs", f"reaper: {exc}")
        return report

    def _cycle_steps(self, report: CycleReport) -> None:
        cache_counts: JobCounts | None = None
        if self.config.cache_file is not None:
            report.cache_reaped = self._reap_cache(report)
            cache_counts = self._count_cache()
        db_counts: JobCounts | None = None
        if self._database is not None:
            self._reap_database(report)
            db_counts = self._count_database(report)
            report.database_up = self._database.up
        if self.health is not None:
            report.api = self.health.check()
            if not report.api.up:
                report.errors.add("health")
        if db_counts is not None:
            report.jobs_active = db_counts.active
        elif cache_counts is not None:
            report.jobs_active = cache_counts.active
        if self._cycles % STATS_EVERY == 0:
            report.stats = self._stats(report)
        if self.config.force_clean.auto and self._auto.due(
            report.api.jobs_active if report.api else None,
            db_counts.active if db_counts else None,
        ):
            report.force_clean = force_clean(
                self.config,
                self._database,
                now=self._clock(),
                dry_run=False,
                min_age=self.config.force_clean.min_age,
            )

    def _reap_cache(self, report: CycleReport) -> dict[str, int]:
        path = self.config.cache_file
        assert path is not None
        try:
            removed = cache.reap_cache(
                path, self.config.stale_after, self._clock(), zone=self.config.cache_zone
            )
        except (cache.CacheError, OSError) as exc:
            message = str(exc) if isinstance(exc, cache.CacheError) else f"{path}: {exc}"
            report.errors.add("cache", f"cache: {message}")
            if message != self._cache_problem:
                log.error("job cache left untouched: %s", message)
            self._cache_problem = message
            return {}
        if self._cache_problem is not None:
            log.info("job cache %s readable again", path)
            self._cache_problem = None
        if removed:
            log.info(
                "reaped %d stale jobs from the cache %s (%s)",
                sum(removed.values()),
                path,
                summary(removed),
            )
        return removed

    def _count_cache(self) -> JobCounts | None:
        path = self.config.cache_file
        assert path is not None
        try:
            return cache.count_cache(
                cache.read_cache(path),
                self.config.stale_after,
                self._clock(),
                zone=self.config.cache_zone,
            )
        except cache.CacheError:
            return None  # already reported and logged by the reaping step

    def _reap_database(self, report: CycleReport) -> None:
        db = self.config.database
        assert db is not None and self._database is not None

        def reap(conn: Connection) -> None:
            # Each batch is one transaction that takes the reaper lock with
            # pg_try_advisory_xact_lock first: nothing is held between transactions, so a
            # transaction-mode pooler can hand the server connection to the API safely.
            for status in db.active_statuses:
                limit = self.config.stale_after[status]
                reason = (
                    f"stale: {status} with no update for over {format_duration(limit)} "
                    "(reaped by limpeza)"
                )

                def done(n: int, status: str = status) -> None:
                    report.database_reaped[status] = report.database_reaped.get(status, 0) + n

                try:
                    end_jobs(conn, db, status, limit, reason, progress=done, lock=True)
                except ReaperLockHeldError:
                    if report.database_locked is None:
                        report.database_locked = False
                        log.debug("database: another cleaner holds the reaper lock; skipping")
                    else:
                        log.debug("database: another cleaner took the reaper lock; stopping")
                    return
                report.database_locked = True

        run_step(self._database, report.errors, "reaping", reap)
        if report.database_reaped:
            log.info(
                "reaped %d stale jobs in the database (%s) -> %s",
                sum(report.database_reaped.values()),
                summary(report.database_reaped),
                db.error_status,
            )

    def _count_database(self, report: CycleReport) -> JobCounts | None:
        db = self.config.database
        assert db is not None and self._database is not None
        return run_step(
            self._database,
            report.errors,
            "counting jobs",
            lambda conn: count_database(conn, db, self.config.stale_after),
        )

    def _stats(self, report: CycleReport) -> dict[str, int] | None:
        stats: dict[str, int] | None = None
        db = self.config.database
        if db is not None and self._database is not None:
            stats = run_step(
                self._database, report.errors, "stats", lambda c: stats_since(c, db, STATS_WINDOW)
            )
        elif self.config.cache_file is not None:
            with contextlib.suppress(cache.CacheError):
                records = cache.read_cache(self.config.cache_file)
                stats = cache.count_recent(
                    records, self._clock() - STATS_WINDOW, zone=self.config.cache_zone
                )
        if stats is not None:
            log.info("jobs in the last 24h by status: %s", dict(sorted(stats.items())))
        return stats

    # ------------------------------------------------------------------ force-clean

    def force_clean(
        self, dry_run: bool, *, min_age: float = 0.0, sources: Collection[str] = JOB_SOURCES
    ) -> ForceCleanReport:
        """Ends every active job older than ``min_age`` (0: all of them) in ``sources``."""
        return force_clean(
            self.config,
            self._database,
            now=self._clock(),
            dry_run=dry_run,
            min_age=min_age,
            sources=sources,
        )
