"""Whether the last configuration reload (SIGHUP) worked, as metrics, like Prometheus's own.

``limpeza_exporter_config_last_reload_successful`` is 1 after the start and after every
reload that took the new file, 0 after one that kept the old configuration;
``limpeza_exporter_config_last_reload_success_timestamp_seconds`` is when the configuration
in use was loaded. A refused file is then visible in the metrics, not only in the log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector


class ReloadStatus(Collector):
    """The outcome of the last load of the configuration; the loaded one counts as a success."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._successful = True
        self._success_at = clock()

    def succeeded(self) -> None:
        with self._lock:
            self._successful = True
            self._success_at = self._clock()

    def failed(self) -> None:
        with self._lock:
            self._successful = False

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            successful, success_at = self._successful, self._success_at
        yield GaugeMetricFamily(
            "limpeza_exporter_config_last_reload_successful",
            "1 when the last load of the configuration (start or SIGHUP) succeeded; 0 when a "
            "reload was refused and the previous configuration is still in use.",
            value=1 if successful else 0,
        )
        yield GaugeMetricFamily(
            "limpeza_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time the configuration in use was loaded (at start or by SIGHUP).",
            value=success_at,
        )
