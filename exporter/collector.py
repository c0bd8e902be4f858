"""The limpeza collector: fresh metric families at every scrape, from four sources.

* the configuration (rules, statuses, thresholds: the known label values, set to 0 first);
* the cleaner's state file (counters, last sweep, what it saw in each directory, the API's
  health), read with ``cleaner.state.read_state``;
* the jobs, counted now with the cleaner's own code (``cleaner.jobs``, over the same kept
  connection class the reaper uses): one query on the jobs table when a database is
  configured, else the JSON job cache;
* ``statvfs`` of each monitored directory.

A scrape never walks a directory tree and never fails for a partial fault: a database that
is down or slow gives ``limpeza_database_up 0``, a missing or corrupt state file gives
``limpeza_state_up 0`` and no counters, a directory that cannot be read has no filesystem
series. Each such fault is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from cleaner.config import Config, DatabaseConfig
from cleaner.jobs.cache import CacheError, count_cache, read_cache
from cleaner.jobs.connection import DatabaseDownError, DatabaseError, KeptConnection
from cleaner.jobs.database import count_database
from cleaner.jobs.staleness import JobCounts
from cleaner.state import ERROR_STAGES, JOB_SOURCES, SKIP_REASONS, State, read_state

log = logging.getLogger(__name__)

APPLICATION_NAME = "limpeza-exporter"

Clock = Callable[[], float]
StatVFS = Callable[[Path], os.statvfs_result]


def _statvfs(path: Path) -> os.statvfs_result:
    return os.statvfs(path)


class _Faults:
    """Remembers the current problem of each source and logs only when it changes."""

    def __init__(self) -> None:
        self._current: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def report(self, source: str, problem: str | None) -> None:
        """A warning when a source fails, an info line when it recovers, nothing between."""
        with self._lock:
            before = self._current.get(source)
            self._current[source] = problem
        if problem is not None and before is None:
            log.warning("%s: %s", source, problem)
        elif problem is not None and problem != before:
            log.debug("%s: still failing: %s", source, problem)
        elif problem is None and before is not None:
            log.info("%s: readable again", source)


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


def _gauge(name: str, doc: str, value: float | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class LimpezaCollector(Collector):
    """Builds every limpeza metric at scrape time; register it in the exporter's registry."""

    def __init__(
        self,
        config: Config,
        *,
        version: str = "",
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        statvfs: StatVFS = _statvfs,
    ) -> None:
        self._version = version
        self._clock = clock
        self._monotonic = monotonic
        self._statvfs = statvfs
        self._faults = _Faults()
        self._config = config
        self._database = self._probe(config)

    @staticmethod
    def _probe(config: Config) -> DatabaseProbe | None:
        db = config.jobs.database
        if db is None:
            return None
        return DatabaseProbe(db, dict(config.jobs.stale_after), config.exporter.database_timeout)

    def reload(self, config: Config) -> None:
        """Takes a new configuration from the next scrape on."""
        old = self._database
        self._config = config
        self._database = self._probe(config)
        if old is not None:
            old.close()

    def close(self) -> None:
        if self._database is not None:
            self._database.close()

    # ------------------------------------------------------------------ collect

    def collect(self) -> Iterator[Metric]:
        started = self._monotonic()
        config = self._config
        database = self._database
        info = GaugeMetricFamily(
            "limpeza_exporter_build_info",
            "Always 1; the version label is the limpeza version of this exporter.",
            labels=["version"],
        )
        info.add_metric([self._version or "unknown"], 1)
        yield info
        yield from self._config_metrics(config)
        yield from self._job_metrics(config, database)
        yield from self._state_metrics(config)
        yield from self._filesystem_metrics(config)
        yield _gauge(
            "limpeza_exporter_scrape_duration_seconds",
            "Seconds this exporter spent collecting the metrics of this scrape.",
            max(0.0, self._monotonic() - started),
        )

    def _config_metrics(self, config: Config) -> Iterator[Metric]:
        stale_after = GaugeMetricFamily(
            "limpeza_jobs_stale_after_seconds",
            "Age past which an active job counts as stale (jobs.stale_after in the config).",
            labels=["status"],
        )
        for status, seconds in config.jobs.stale_after.items():
            stale_after.add_metric([status], seconds)
        yield stale_after
        max_age = GaugeMetricFamily(
            "limpeza_rule_max_age_seconds",
            "Age past which a file matching the rule is removed (files.rules in the config).",
            labels=["rule"],
        )
        for rule in config.files.rules:
            max_age.add_metric([rule.name], rule.max_age)
        yield max_age

    # ------------------------------------------------------------------ jobs

    def _job_metrics(self, config: Config, database: DatabaseProbe | None) -> Iterator[Metric]:
        counts: JobCounts | None = None
        if database is not None:
            counts, problem = database.count()
            self._faults.report("database", problem)
            yield _gauge(
                "limpeza_database_up",
                "1 when the job count query on the jobs table succeeded in this scrape.",
                1 if counts is not None else 0,
            )
        elif config.jobs.cache_file is not None:
            try:
                records = read_cache(config.jobs.cache_file, lock_wait=1.0)
                counts = count_cache(
                    records,
                    config.jobs.stale_after,
                    self._clock(),
                    zone=config.jobs.cache_zone,
                )
                self._faults.report(f"job cache {config.jobs.cache_file}", None)
            except CacheError as exc:
                self._faults.report(f"job cache {config.jobs.cache_file}", str(exc))
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

    # ------------------------------------------------------------------ state file

    def _read_state(self, path: Path) -> State | None:
        try:
            state = read_state(path)
        except FileNotFoundError:
            problem = "missing (the cleaner has not written it yet?): no counters exported"
        except (OSError, ValueError) as exc:
            problem = f"unusable ({exc}): no counters exported"
        else:
            self._faults.report(f"state file {path}", None)
            return state
        self._faults.report(f"state file {path}", problem)
        return None

    def _state_metrics(self, config: Config) -> Iterator[Metric]:
        state = self._read_state(config.state_file)
        yield _gauge(
            "limpeza_state_up",
            "1 when the cleaner's state file was read in this scrape; "
            "0 means no counters are exported.",
            1 if state is not None else 0,
        )
        if state is None:
            return
        yield from self._counters(config, state)
        yield from self._sweep_metrics(state)
        yield from self._missing_metrics(config, state)
        if config.jobs.health_url is not None:
            yield from self._api_metrics(state)

    def _counters(self, config: Config, state: State) -> Iterator[Metric]:
        rules = [rule.name for rule in config.files.rules]
        for name, doc, values in (
            (
                "limpeza_files_removed",
                "Files the cleaner removed, per rule, since its state file was created.",
                state.files_removed,
            ),
            (
                "limpeza_bytes_removed",
                "Bytes of the files the cleaner removed, per rule, since its state file "
                "was created.",
                state.bytes_removed,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=["rule"])
            for rule, number in sorted({**dict.fromkeys(rules, 0), **values}.items()):
                family.add_metric([rule], number)
            yield family

        skipped = CounterMetricFamily(
            "limpeza_files_skipped",
            "Matching entries the cleaner left alone, per reason (from its state file).",
            labels=["reason"],
        )
        for reason, number in sorted({**dict.fromkeys(SKIP_REASONS, 0), **state.skipped}.items()):
            skipped.add_metric([reason], number)
        yield skipped

        reaped = CounterMetricFamily(
            "limpeza_jobs_reaped",
            "Stale jobs the cleaner ended, per source (database, cache) and status they had "
            "(from its state file).",
            labels=["source", "status"],
        )
        known: dict[tuple[str, str], int] = {
            (source, status): 0 for source in JOB_SOURCES for status in config.jobs.active_statuses
        }
        for source, per_status in state.jobs_reaped.items():
            for status, number in per_status.items():
                known[(source, status)] = number
        for (source, status), number in sorted(known.items()):
            reaped.add_metric([source, status], number)
        yield reaped

        errors = CounterMetricFamily(
            "limpeza_cleanup_errors",
            "Errors the cleaner met, per stage (files, cache, database, health, jobs, state), "
            "from its state file.",
            labels=["stage"],
        )
        for stage, number in sorted({**dict.fromkeys(ERROR_STAGES, 0), **state.errors}.items()):
            errors.add_metric([stage], number)
        yield errors

        yield CounterMetricFamily(
            "limpeza_force_cleans",
            "Force-cleans (every active job ended at once) the cleaner ran, from its state file.",
            value=state.force_cleans,
        )
        yield CounterMetricFamily(
            "limpeza_jobs_reap_skipped",
            "Cycles whose database reaping was skipped because another cleaner held the "
            "reaper lock, from the state file.",
            value=state.reaps_skipped,
        )
        yield CounterMetricFamily(
            "limpeza_sweeps",
            "Sweeps (file rules and job reaping) the cleaner completed, from its state file.",
            value=state.sweeps,
        )

    def _missing_metrics(self, config: Config, state: State) -> Iterator[Metric]:
        missing = GaugeMetricFamily(
            "limpeza_directory_missing",
            "1 when the cleaner's last sweep found the configured directory missing, so "
            "nothing was swept there (from its state file).",
            labels=["directory"],
        )
        gone = set(state.missing_directories)
        for directory in config.files.all_directories():
            missing.add_metric([str(directory)], 1 if str(directory) in gone else 0)
        yield missing

    def _sweep_metrics(self, state: State) -> Iterator[Metric]:
        last_sweep = state.last_sweep_end or state.last_sweep_start
        if last_sweep is not None:
            yield _gauge(
                "limpeza_last_sweep_timestamp_seconds",
                "Unix time the cleaner's last sweep ended, from its state file.",
                last_sweep,
            )
        if state.last_success is not None:
            yield _gauge(
                "limpeza_last_success_timestamp_seconds",
                "Unix time of the cleaner's last sweep without any error, from its state file.",
                state.last_success,
            )
        if state.last_sweep_duration is not None:
            yield _gauge(
                "limpeza_sweep_duration_seconds",
                "How long the cleaner's last sweep took, from its state file.",
                state.last_sweep_duration,
            )
        files = GaugeMetricFamily(
            "limpeza_directory_files",
            "Regular files in the directory when the cleaner last swept it, after removal "
            "(from its state file; the exporter never walks a directory).",
            labels=["directory"],
        )
        size = GaugeMetricFamily(
            "limpeza_directory_bytes",
            "Bytes of the regular files in the directory when the cleaner last swept it, "
            "after removal (from its state file).",
            labels=["directory"],
        )
        for directory, usage in sorted(state.directories.items()):
            files.add_metric([directory], usage.files)
            size.add_metric([directory], usage.bytes)
        yield files
        yield size

    def _api_metrics(self, state: State) -> Iterator[Metric]:
        api = state.api
        if api.up is not None:
            yield _gauge(
                "limpeza_api_up",
                "1 when the API's health endpoint (jobs.health_url) answered with a 2xx status "
                "at the cleaner's last check, from its state file.",
                1 if api.up else 0,
            )
        if api.jobs_active is not None:
            yield _gauge(
                "limpeza_api_jobs_active",
                "Active jobs the API's health endpoint reported at the cleaner's last check, "
                "from its state file.",
                api.jobs_active,
            )
        if api.checked_at is not None:
            yield _gauge(
                "limpeza_api_last_check_timestamp_seconds",
                "Unix time of the cleaner's last check of the API's health endpoint.",
                api.checked_at,
            )

    # ------------------------------------------------------------------ filesystems

    def _filesystem_metrics(self, config: Config) -> Iterator[Metric]:
        families = {
            "size": GaugeMetricFamily(
                "limpeza_filesystem_size_bytes",
                "Size of the filesystem holding the monitored directory (statvfs at scrape time).",
                labels=["directory"],
            ),
            "avail": GaugeMetricFamily(
                "limpeza_filesystem_avail_bytes",
                "Bytes available to unprivileged users on the filesystem holding the "
                "monitored directory (statvfs at scrape time).",
                labels=["directory"],
            ),
            "files": GaugeMetricFamily(
                "limpeza_filesystem_files",
                "Inodes of the filesystem holding the monitored directory (statvfs at scrape "
                "time; 0 when the filesystem has no fixed number).",
                labels=["directory"],
            ),
            "files_free": GaugeMetricFamily(
                "limpeza_filesystem_files_free",
                "Inodes available to unprivileged users on the filesystem holding the "
                "monitored directory (statvfs at scrape time).",
                labels=["directory"],
            ),
        }
        for directory in config.files.all_directories():
            try:
                st = self._statvfs(directory)
            except OSError as exc:
                self._faults.report(
                    f"directory {directory}", f"statvfs failed: {exc.strerror or exc}"
                )
                continue
            self._faults.report(f"directory {directory}", None)
            label = [str(directory)]
            families["size"].add_metric(label, st.f_blocks * st.f_frsize)
            families["avail"].add_metric(label, st.f_bavail * st.f_frsize)
            families["files"].add_metric(label, st.f_files)
            families["files_free"].add_metric(label, st.f_favail)
        yield from families.values()
