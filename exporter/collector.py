"""The limpeza collector: fresh metric families at every scrape, from four sources.

* the configuration (rules, statuses, thresholds: the known label values, set to 0 first);
* the cleaner's state file (counters, last sweep, what it saw in each directory, the API's
  health): ``exporter.state_metrics``;
* the jobs, counted now with the cleaner's own code: one query on the jobs table when a
  database is configured, else the JSON job cache: ``exporter.job_metrics``;
* ``statvfs`` of each monitored directory: ``exporter.filesystem_metrics``;
* each quarantine's summary (files, bytes, restored, expired): ``exporter.quarantine_metrics``;
* and this process (``process_*``, client_python's process collector).

A scrape never walks a directory tree and never fails for a partial fault: a database that
is down or slow gives ``limpeza_database_up 0``, a missing or corrupt state file gives
``limpeza_state_up 0`` and no counters, a directory that cannot be read has no filesystem
series. Each such fault is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from cleaner.config import Config
from exporter.faults import Faults
from exporter.filesystem_metrics import StatVFS, filesystem_metrics, os_statvfs
from exporter.job_metrics import APPLICATION_NAME, DatabaseProbe, job_metrics, probe_for
from exporter.quarantine_metrics import quarantine_metrics
from exporter.state_metrics import state_metrics

__all__ = ["APPLICATION_NAME", "DatabaseProbe", "LimpezaCollector"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class LimpezaCollector(Collector):
    """Builds every limpeza metric at scrape time; register it in the exporter's registry."""

    def __init__(
        self,
        config: Config,
        *,
        version: str = "",
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        statvfs: StatVFS = os_statvfs,
    ) -> None:
        self._version = version
        self._clock = clock
        self._monotonic = monotonic
        self._statvfs = statvfs
        self._faults = Faults(log)
        # process_* (CPU, memory, file descriptors, start time) of this exporter, built
        # fresh at each scrape; registry=None: it is part of this collector, not registered.
        self._process = ProcessCollector(registry=None)
        self._config = config
        self._database = probe_for(config)

    def reload(self, config: Config) -> None:
        """Takes a new configuration from the next scrape on."""
        old = self._database
        self._config = config
        self._database = probe_for(config)
        if old is not None:
            old.close()

    def close(self) -> None:
        if self._database is not None:
            self._database.close()

    def collect(self) -> Iterator[Metric]:
        started = self._monotonic()
        config = self._config
        info = GaugeMetricFamily(
            "limpeza_exporter_build_info",
            "Always 1; the version label is the limpeza version of this exporter.",
            labels=["version"],
        )
        info.add_metric([self._version or "unknown"], 1)
        yield info
        yield from _config_metrics(config)
        yield from job_metrics(config, self._database, self._faults, self._clock)
        yield from state_metrics(config, self._faults)
        yield from filesystem_metrics(config, self._statvfs, self._faults)
        yield from quarantine_metrics(config, self._faults)
        yield from self._process.collect()
        yield GaugeMetricFamily(
            "limpeza_exporter_scrape_duration_seconds",
            "Seconds this exporter spent collecting the metrics of this scrape.",
            value=max(0.0, self._monotonic() - started),
        )


def _config_metrics(config: Config) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "limpeza_sweep_interval_seconds",
        "Seconds between two sweeps of the cleaner (interval in the config); "
        "LimpezaSweepOverdue counts the time since the last success in these.",
        value=config.interval,
    )
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
